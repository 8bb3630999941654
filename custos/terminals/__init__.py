"""Terminals: what answers a request at the end of the governance chain (``custos.stage``).

``custos.terminals.llm`` routes model calls to providers; the MCP proxy joins it here.
"""
