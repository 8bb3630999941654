"""Which adapter serves which provider ``type`` in the config file."""

from __future__ import annotations

from custos.config.schema import ProviderSettings
from custos.providers.anthropic import AnthropicAdapter
from custos.providers.azure_openai import AzureOpenAIAdapter
from custos.providers.base import ProviderAdapter
from custos.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai_compatible": OpenAICompatibleAdapter,
    "azure_openai": AzureOpenAIAdapter,
    "anthropic": AnthropicAdapter,
}


def adapter_for(account: str, settings: ProviderSettings) -> ProviderAdapter:
    return ADAPTERS[settings.type](account, settings)
