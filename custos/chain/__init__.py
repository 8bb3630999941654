"""The governance chain: the stages every request crosses, in front of a terminal.

``custos.stage`` states the contract; ``custos.chain.chain`` runs it; ``custos.chain.stream``
makes a streamed answer settle on close.
"""

from custos.chain.chain import READ_REQUEST, GovernanceChain, ReadRequest
from custos.chain.stream import GovernedStream

__all__ = ["READ_REQUEST", "GovernanceChain", "GovernedStream", "ReadRequest"]
