"""A Google service-account key file (the JSON Google issues for a service account), read and
checked: the fields the token exchange needs, with the RSA private key loaded.

Part of the config because loading the config checks a Vertex AI account's key (a wrong key file
is a config error, named without its content); the provider signs its token requests with it
(``custos.providers.google_auth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key


@dataclass(frozen=True, slots=True)
class ServiceAccountKey:
    client_email: str
    private_key: RSAPrivateKey
    private_key_id: str | None
    token_uri: str
    project_id: str | None

    @classmethod
    def parse(cls, text: str) -> ServiceAccountKey:
        """The key file's fields; a ValueError that names what is wrong (never its content)."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("credentials is not a JSON service-account key file") from None
        if not isinstance(data, dict) or data.get("type") != "service_account":
            raise ValueError('credentials must be a key file of "type": "service_account"')
        for field in ("client_email", "private_key", "token_uri"):
            if not isinstance(data.get(field), str) or not data[field]:
                raise ValueError(f"the service-account key file has no {field}")
        if not data["token_uri"].startswith(("https://", "http://")):
            raise ValueError("the service-account key file's token_uri is not an http(s) URL")
        try:
            key = load_pem_private_key(data["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("the key file's private_key is not a PEM private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("the service-account key file's private_key is not an RSA key")
        return cls(
            client_email=data["client_email"],
            private_key=key,
            private_key_id=_optional_str(data.get("private_key_id")),
            token_uri=data["token_uri"],
            project_id=_optional_str(data.get("project_id")),
        )


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
