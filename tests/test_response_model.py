"""What OpenAI and Anthropic clients get back, whatever served the call: the model name they asked
for (never an Azure deployment or an upstream's own name), plain and streaming, and OpenAI
streams whose every chunk has a choice, except the final usage chunk a client asked for with
``stream_options.include_usage``.

The mock's Azure stream opens with a ``choices: []`` chunk (Azure's prompt filter results), as
Azure does; the README's loop ``chunk.choices[0].delta.content`` must not meet it.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import GatewayProcess

#: Direct, Azure (deployment gpt55-eu), virtual (served by Azure after a 503), Anthropic.
MODELS = [
    "openai-main/gpt-5.5",
    "azure-eu/gpt-5.5",
    "chat-default",
    "claude-main/claude-sonnet-4.5",
]
HI = [{"role": "user", "content": "Hi"}]


def openai_client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0)


def anthropic_client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_openai_reply_names_the_model_asked_for(gateway, model: str) -> None:
    with openai_client(gateway) as sdk:
        reply = sdk.chat.completions.create(model=model, messages=HI)
    assert reply.model == model


@pytest.mark.parametrize("model", MODELS)
def test_the_readme_streaming_loop_works_on_every_route(gateway, model: str) -> None:
    text = ""
    with openai_client(gateway) as sdk:
        for chunk in sdk.chat.completions.create(model=model, stream=True, messages=HI):
            text += chunk.choices[0].delta.content or ""
            assert chunk.model == model
    assert text.startswith("Mock reply to Hi")


@pytest.mark.parametrize("model", MODELS)
def test_only_the_usage_chunk_asked_for_has_no_choices(gateway, model: str) -> None:
    with openai_client(gateway) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model=model, stream=True, messages=HI, stream_options={"include_usage": True}
            )
        )
    *content, last = chunks
    assert all(chunk.choices for chunk in content)
    assert last.choices == [] and last.usage is not None and last.usage.prompt_tokens > 0
    assert {chunk.model for chunk in chunks} == {model}


@pytest.mark.parametrize(
    "model", ["openai-main/text-embedding-3-small", "azure-eu/text-embedding-3-small"]
)
def test_embeddings_name_the_model_asked_for(gateway, model: str) -> None:
    with openai_client(gateway) as sdk:
        assert sdk.embeddings.create(model=model, input="hi").model == model


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_reply_names_the_model_asked_for(gateway, model: str) -> None:
    with anthropic_client(gateway) as sdk:
        message = sdk.messages.create(model=model, max_tokens=64, messages=HI)
    assert message.model == model


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_stream_names_the_model_asked_for(gateway, model: str) -> None:
    with (
        anthropic_client(gateway) as sdk,
        sdk.messages.stream(model=model, max_tokens=64, messages=HI) as stream,
    ):
        events = list(stream)
        final = stream.get_final_message()
    starts = [event for event in events if event.type == "message_start"]
    assert [event.message.model for event in starts] == [model]
    assert final.model == model
    assert final.content[0].text.startswith("Mock reply to Hi")
