"""Config schema of ``residency:``: where requests may be served, by what they carry.

    residency:
      - id: eu-customer-data
        when: {data_classes: [customer_data]}
        allow_regions: [eu]

A rule applies to the requests its ``when`` matches (the shared matcher, ``data_classes``
included) and allows only the targets whose provider account's ``region`` is among
``allow_regions``. Each entry is a region as an account writes it (``eu-west-1``), a ``*`` glob
(``europe-*``), or a group name from ``custos.policy.regions`` (``eu``, ``us``). Every matching
rule must allow a target (their allowed sets intersect); ``custos.policy.residency`` applies
them and docs/residency.md explains them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from custos.config.rules import WhenSettings

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A region, a group name or a glob: letters, digits, ``_ . -`` and ``*``.
_REGION_ENTRY = re.compile(r"^[a-z0-9*][a-z0-9._*-]{0,63}$")


def _model_calls_only(when: WhenSettings) -> WhenSettings:
    if when.mcp_tools is not None:
        raise ValueError("when.mcp_tools cannot be used here: residency governs model calls")
    return when


class ResidencyRule(BaseModel):
    """Requests ``when`` matches may only be served by accounts in ``allow_regions``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=_NAME)]
    when: Annotated[WhenSettings, AfterValidator(_model_calls_only)] = Field(
        default_factory=WhenSettings
    )
    allow_regions: Annotated[list[str], Field(min_length=1, max_length=200)]

    @field_validator("allow_regions")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        """Regions are compared in lower case (as every cloud writes them)."""
        entries = [v.strip().lower() if isinstance(v, str) else v for v in value]
        for entry in entries:
            if not _REGION_ENTRY.match(entry):
                raise ValueError(
                    f"{entry!r} is not a region, region group or '*' glob (e.g. eu, "
                    "eu-west-1, europe-*)"
                )
        if len(set(entries)) != len(entries):
            raise ValueError("a region is listed twice")
        return entries
