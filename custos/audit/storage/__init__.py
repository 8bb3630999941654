"""Writing records durably: the writer's queue, the local spool, the audit tables and the
encrypted content store. The SQL each engine needs is the state backend's (``custos.state``);
nothing here asks which engine it is talking to."""
