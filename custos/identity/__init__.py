"""Identity: tokens, principals, and the in-memory directory the request path authenticates with.

- ``tokens``: token format, checksum, keyed hash; ``TokenService`` issues, rotates, revokes.
- ``principal``: ``Principal`` (who is calling) and ``AuthFailure`` (why nobody is).
- ``directory``: ``Directory.lookup(token)``, from memory, kept fresh by invalidations.
"""

from custos.identity.directory import Directory
from custos.identity.principal import AuthFailure, Principal
from custos.identity.tokens import IssuedToken, TokenService, check_format, generate, hash_token

__all__ = [
    "AuthFailure",
    "Directory",
    "IssuedToken",
    "Principal",
    "TokenService",
    "check_format",
    "generate",
    "hash_token",
]
