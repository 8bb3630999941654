"""Vertex AI: Gemini models at a regional, per-project endpoint, with service-account credentials.

The bodies are Gemini's (``custos.providers.gemini``); the URL is
``{base_url}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:…``, where
``base_url`` defaults to ``https://{region}-aiplatform.googleapis.com`` (the account's region is
the one the record and residency rules see). The bearer token comes from the account's
service-account key (``custos.providers.google_auth``), fetched in ``prepare`` before the request
is built, so ``build_request`` stays free of I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from custos.config.service_account import ServiceAccountKey
from custos.providers.gemini import GeminiAdapter
from custos.providers.google_auth import AccessTokens

if TYPE_CHECKING:
    from custos.config.schema import ProviderSettings
    from custos.providers.base import ProviderCall
    from custos.providers.transport import Transport


#: One token cache per account and key, kept across config reloads: a reload that keeps the
#: account's key keeps its token (and an exchange under way) instead of exchanging again.
_TOKENS: dict[tuple[str, str], AccessTokens] = {}


def tokens_for(account: str, credentials: str) -> AccessTokens:
    held = _TOKENS.get((account, credentials))
    if held is None:
        held = _TOKENS[(account, credentials)] = AccessTokens(
            account, ServiceAccountKey.parse(credentials)
        )
    return held


class VertexAdapter(GeminiAdapter):
    needs_prepare = True

    def __init__(self, account: str, settings: ProviderSettings) -> None:
        super().__init__(account, settings)
        self.tokens = tokens_for(account, settings.credentials or "")
        key = self.tokens.key
        self.project = settings.project or key.project_id or ""
        self.region = settings.region or ""

    async def prepare(self, transport: Transport) -> None:
        await self.tokens.get(transport)  # the cached token, without I/O, when it is valid

    def model_url(self, call: ProviderCall) -> str:
        version = self.settings.api_version or "v1"
        project, region = quote(self.project, safe=""), quote(self.region, safe="")
        model = quote(call.upstream_model, safe="@")
        return (
            f"{self.base_url}/{version}/projects/{project}/locations/{region}"
            f"/publishers/google/models/{model}"
        )

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens.latest() or ''}"}
