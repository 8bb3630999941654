"""Which adapter serves which provider ``type`` in the config file.

Adapters are imported on first use, so a config that names only OpenAI accounts never loads the
others.
"""

from __future__ import annotations

from importlib import import_module

from custos.config.schema import ProviderSettings
from custos.providers.base import ProviderAdapter

ADAPTERS: dict[str, str] = {
    "openai": "custos.providers.openai:OpenAIAdapter",
    "openai_compatible": "custos.providers.openai:OpenAICompatibleAdapter",
    "azure_openai": "custos.providers.azure_openai:AzureOpenAIAdapter",
    "anthropic": "custos.providers.anthropic:AnthropicAdapter",
    "gemini": "custos.providers.gemini:GeminiAdapter",
    "vertex": "custos.providers.vertex:VertexAdapter",
    "bedrock": "custos.providers.bedrock:BedrockAdapter",
}


def adapter_for(account: str, settings: ProviderSettings) -> ProviderAdapter:
    module, _, name = ADAPTERS[settings.type].partition(":")
    adapter: type[ProviderAdapter] = getattr(import_module(module), name)
    return adapter(account, settings)
