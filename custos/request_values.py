"""Values from the config file that go into outgoing requests (provider, OTLP, webhook).

Checked on the resolved value (after ``${env:}``/``${file:}``): a key file or variable ending
in a newline is the usual cause of a control character, and the request such a value goes into
could not be sent (or would carry a second header line). A bottom module: it imports nothing
from ``custos``, so every section of the config schema can use it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(
            "contains a control character (a newline, tab, NUL or the like): it goes into "
            "requests, where it cannot be sent"
        )
    return value


#: A value that goes into an outgoing request's URL or headers (and so also every secret).
RequestValue = Annotated[str, AfterValidator(_no_control_characters)]
