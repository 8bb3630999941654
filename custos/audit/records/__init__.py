"""The audit record and the trail that makes one per event: canonical bytes, event builders, the
request path's hooks, captured content. See ``custos.audit`` for the other subsystems."""
