"""How email addresses are compared: users, team members, access subjects and IdP claims all
name people by email, and every comparison goes through ``email_key``.

A bottom module (it imports nothing from ``custos``): identity, policy and the runtime compare
emails, and so does the store, which keeps the key in a unique column.
"""

from __future__ import annotations


def email_key(email: str) -> str:
    """The form emails are compared in: case-folded, so ``A@x`` and ``a@X`` are one user."""
    return email.strip().casefold()
