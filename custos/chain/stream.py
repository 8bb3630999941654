"""``GovernedStream``: a streaming answer whose closing settles its request.

An async generator's ``finally`` runs only if the generator started: a stream that is answered
but never iterated (its client left between the answer and the first chunk) would keep its
provider connection open and its request unsettled. The HTTP layer closes every stream it is
handed, iterated or not; closing a ``GovernedStream`` closes the generator, then runs the
terminal's clean-up for a stream that never started, then settles the request through the chain
(which does nothing when the relay settled it already).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable


class GovernedStream:
    __slots__ = ("_chunks", "_on_close", "_settle", "closed")

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        on_close: Callable[[], None] | None,
        settle: Callable[[], None],
    ) -> None:
        self._chunks = chunks
        self._on_close = on_close
        self._settle = settle
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The generator itself: iterating costs no frame of this class per chunk.
        return self._chunks

    async def aclose(self) -> None:
        """Close the stream (idempotent): the provider's connection and the settlement."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._chunks.aclose()
        finally:
            try:
                if self._on_close is not None:
                    self._on_close()
            finally:
                self._settle()
