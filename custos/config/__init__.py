"""The one reviewed config file: schema, loading with secret references, revisions, hot reload."""

from custos.config.loader import ConfigError, LoadedConfig, Problem, load_config, parse_config
from custos.config.schema import Config

__all__ = ["Config", "ConfigError", "LoadedConfig", "Problem", "load_config", "parse_config"]
