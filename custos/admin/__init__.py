"""The control plane's admin layer: who may change which identity, with no HTTP in it.

- ``service``: ``AdminService``, one method per admin operation, each taking the calling
  ``Principal`` first and enforcing the admin roles (``rights``) before touching the store.
- ``bootstrap``: ``bootstrap``, what ``custos init`` runs to create the first admin.
- ``schemas``: the JSON request and response models of the admin API (pydantic).
- ``openapi``: the OpenAPI 3.1 document, generated from those models and the route table.
- ``mcp_credentials``: each user's own credentials for ``auth: per_user`` MCP servers (set,
  list, delete; never read back).

The HTTP handler is ``custos.http.admin.AdminAPI``; the CLI is ``custos.cli.admin`` (and
``custos.cli.store`` for ``custos init``). The audit trail's admin operations are arranged the
same way: ``custos.audit.service``, the same HTTP handler, ``custos.cli.audit``.
"""

from custos.admin.bootstrap import bootstrap
from custos.admin.errors import BadInput, Forbidden
from custos.admin.service import AdminService

__all__ = ["AdminService", "BadInput", "Forbidden", "bootstrap"]
