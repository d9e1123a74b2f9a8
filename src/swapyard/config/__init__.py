"""Load and validate the YAML config into frozen value objects.

One module per concern; everything below is imported from ``swapyard.config``:

- ``values``: the frozen dataclasses the rest of swapyard reads, and every default;
- ``schema``: the pydantic boundary (unknown keys rejected), durations and sizes,
  error wording, the JSON schema;
- ``macros``: ``${...}`` expansion, argument splitting, secrets from the environment;
- ``params``: per-model request parameters and variants (issue 14);
- ``models``: one ``models:`` entry and its engine kind → ``ModelSpec``;
- ``load``: ``load_config(text)``, the core, and the checks across sections.
"""

from swapyard.config.load import LOOPBACK, check_exposure, load_config, load_config_file
from swapyard.config.macros import render
from swapyard.config.params import Params, VariantSpec
from swapyard.config.schema import Duration, Size, config_json_schema, parse_duration, parse_size
from swapyard.config.values import (
    AuthSpec,
    Config,
    DeviceSpec,
    Footer,
    KeySpec,
    Listed,
    LoadingStatus,
    ModelSpec,
    SchedulerSpec,
    ServerSpec,
    Timeouts,
    UsageSpec,
)

__all__ = [
    "LOOPBACK",
    "AuthSpec",
    "Config",
    "DeviceSpec",
    "Duration",
    "Footer",
    "KeySpec",
    "Listed",
    "LoadingStatus",
    "ModelSpec",
    "Params",
    "SchedulerSpec",
    "ServerSpec",
    "Size",
    "Timeouts",
    "UsageSpec",
    "VariantSpec",
    "check_exposure",
    "config_json_schema",
    "load_config",
    "load_config_file",
    "parse_duration",
    "parse_size",
    "render",
]
