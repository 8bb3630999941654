"""The facts about this gateway process that every audit record names (instance, version).

Its own module so that the log's parts that only name the process (the checkpoint export, the
retention job's purge records) do not import how request records are made (``events``).
"""

from __future__ import annotations

from custos import __version__


class GatewayInfo:
    """The facts about this process every record names."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.version = __version__
