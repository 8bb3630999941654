"""Regions as residency rules name them: exact names, ``*`` globs, and named groups.

A provider account's ``region`` is free text, written as its cloud writes it (``eu-central-1``
on AWS, ``europe-west4`` on Google Cloud, ``westeurope`` on Azure) or as a plain area for
providers without regions (``eu``, ``us``). A rule's ``allow_regions`` entry is one of:

- a **group** name below (``eu``, ``us``): the group's own name and every region its table
  lists. The tables list regions by the country their data centres are in: ``eu`` holds the
  regions in member states of the European Union only, so London (``eu-west-2``,
  ``europe-west2``, ``uksouth``) and Zurich (``eu-central-2``, ``europe-west6``,
  ``switzerlandnorth``) are **not** in it, though AWS names them ``eu-``. A region the table
  does not list is never in a group: name it exactly or by a glob.
- a **glob** with ``*`` (``europe-*``): every region whose name it matches, whatever the table
  says; ``eu-*`` therefore includes AWS's London and Zurich regions.
- anything else: that region exactly.

Names are compared in lower case. An account without a region is in no group and matches no
entry, not even ``*``: a rule never allows a region it cannot know.

Sources for the tables: the region lists of AWS (docs.aws.amazon.com, "Regions and Availability
Zones"), Google Cloud (cloud.google.com/about/locations) and Azure (learn.microsoft.com, "Azure
geographies"), as of 2025.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Regions in member states of the European Union, by cloud.
_EU = {
    "aws": (
        "eu-central-1",  # Frankfurt
        "eu-west-1",  # Ireland
        "eu-west-3",  # Paris
        "eu-north-1",  # Stockholm
        "eu-south-1",  # Milan
        "eu-south-2",  # Spain
    ),
    "gcp": (
        "europe-west1",  # Belgium
        "europe-west3",  # Frankfurt
        "europe-west4",  # Netherlands
        "europe-west8",  # Milan
        "europe-west9",  # Paris
        "europe-west10",  # Berlin
        "europe-west12",  # Turin
        "europe-north1",  # Finland
        "europe-north2",  # Stockholm
        "europe-central2",  # Warsaw
        "europe-southwest1",  # Madrid
    ),
    "azure": (
        "westeurope",  # Netherlands
        "northeurope",  # Ireland
        "francecentral",
        "francesouth",
        "germanywestcentral",
        "germanynorth",
        "swedencentral",
        "swedensouth",
        "italynorth",
        "polandcentral",
        "spaincentral",
    ),
}
#: Regions in the United States, by cloud.
_US = {
    "aws": (
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "us-gov-east-1",
        "us-gov-west-1",
    ),
    "gcp": (
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
    ),
    "azure": (
        "eastus",
        "eastus2",
        "centralus",
        "northcentralus",
        "southcentralus",
        "westcentralus",
        "westus",
        "westus2",
        "westus3",
    ),
}


def _group(name: str, by_cloud: dict[str, tuple[str, ...]]) -> frozenset[str]:
    return frozenset({name, *(region for regions in by_cloud.values() for region in regions)})


#: The groups an ``allow_regions`` entry may name, each with every region it holds.
GROUPS: dict[str, frozenset[str]] = {"eu": _group("eu", _EU), "us": _group("us", _US)}


class RegionSelector:
    """A rule's ``allow_regions``, compiled: ``allows(region)`` is a set lookup, or a regex
    match when the entries have globs."""

    __slots__ = ("_exact", "_glob", "source")

    def __init__(self, entries: Iterable[str]) -> None:
        self.source = tuple(e.lower() for e in entries)
        exact: set[str] = set()
        globs: list[str] = []
        for entry in self.source:
            if "*" in entry:
                globs.append(re.escape(entry).replace(r"\*", ".*"))
            else:
                exact |= GROUPS.get(entry, {entry})
        self._exact = frozenset(exact)
        self._glob = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None

    def allows(self, region: str | None) -> bool:
        if region is None:
            return False
        region = region.lower()
        if region in self._exact:
            return True
        return self._glob is not None and self._glob.fullmatch(region) is not None
