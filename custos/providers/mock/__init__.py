"""Mock LLM provider (OpenAI, Azure OpenAI, Anthropic, Gemini and Vertex AI). The contract is
documented in ``custos.providers.mock_server``, which re-exports this package's public API."""

from .app import MockProvider, create_app
from .content import (
    DEFAULT_DIMENSIONS,
    DEFAULT_WORDS,
    PER_MESSAGE_TOKENS,
    count_tokens,
    prompt_tokens_anthropic,
    prompt_tokens_openai,
)
from .responses_wire import input_tokens_responses
from .server import BackgroundMock, run, serve_in_background

__all__ = [
    "DEFAULT_DIMENSIONS",
    "DEFAULT_WORDS",
    "PER_MESSAGE_TOKENS",
    "BackgroundMock",
    "MockProvider",
    "count_tokens",
    "create_app",
    "input_tokens_responses",
    "prompt_tokens_anthropic",
    "prompt_tokens_openai",
    "run",
    "serve_in_background",
]
