"""What the Gemini and Vertex AI suites share: a service-account key file made for the test."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class ServiceAccount(NamedTuple):
    json: str  # the key file's text
    pem: str  # its private key, to check that it never shows
    public_key: rsa.RSAPublicKey  # to verify the assertions signed with it


def service_account(
    token_uri: str = "https://oauth2.googleapis.com/token", **changes: Any
) -> ServiceAccount:
    """A fresh RSA key in Google's key-file format; a change of None leaves the field out."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": "custos@acme-prod.iam.gserviceaccount.com",
        "token_uri": token_uri,
        **changes,
    }
    text = orjson.dumps({k: v for k, v in key.items() if v is not None}).decode()
    return ServiceAccount(text, pem, private.public_key())
