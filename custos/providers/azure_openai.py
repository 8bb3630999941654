"""Azure OpenAI: OpenAI's bodies, addressed by deployment, authenticated by ``api-key``.

The Responses API is the exception: ``{base_url}/openai/v1/responses``, with the deployment as
the body's ``model`` (the account's ``upstream_model``, renamed in the body as for OpenAI).
"""

from __future__ import annotations

from urllib.parse import quote

from custos.providers.base import ProviderCall
from custos.providers.openai import OpenAIAdapter

_PATHS = {"chat": "chat/completions", "embeddings": "embeddings", "messages": "chat/completions"}


class AzureOpenAIAdapter(OpenAIAdapter):
    def url(self, call: ProviderCall) -> str:
        if call.operation == "responses":
            # Azure serves the Responses API only on its OpenAI-style v1 surface: no deployment
            # in the path (the body's model names it) and no api-version.
            return f"{self.base_url}/openai/v1/responses"
        deployment = quote(call.upstream_model, safe="")
        return (
            f"{self.base_url}/openai/deployments/{deployment}/{_PATHS[call.operation]}"
            f"?api-version={quote(self.settings.api_version or '', safe='')}"
        )

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.settings.api_key or ""}
