"""API and admin keys: which are configured, whether a call needs one, and whether the one it
brings is right (service/protocols/auth.py applies them to HTTP and gRPC).

Keys are compared with hmac.compare_digest against every configured key (no early exit), so the
time taken does not tell how much of a key was right. Messages never echo what was sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.core.errors import Forbidden, Unauthenticated
from service.core.settings import Settings


def checked_key(key: str, source: str) -> str:
    """`key` if it can be sent in an HTTP header and matched, else RuntimeError (naming
    `source`, never the key)."""
    if not key.isascii():
        # NOTE: HTTP header values arrive as latin-1, so a key with other characters could
        # never match over HTTP: refuse it at start instead of serving with a dead key
        raise RuntimeError(
            f"{source}: an API key holds a non-ASCII character; keys must be printable ASCII"
        )
    if not all(33 <= ord(char) <= 126 for char in key):
        raise RuntimeError(
            f"{source}: an API key holds whitespace or a control character; keys must be "
            "printable ASCII without spaces"
        )
    return key


MANAGEMENT_PATH = "/v2/repository/"
"""HTTP paths of the model repository API (management: admin keys when set)."""
MANAGEMENT_METHOD = "/inference.GRPCInferenceService/Repository"
"""gRPC methods of the model repository API (prefix)."""


def keys_from(secret: SecretStr | None, path: Path | None, name: str) -> list[str]:
    """The keys of one setting pair (`name` and `name`_file); RuntimeError (the server does not
    start) when the file is unreadable or empty, or a key is not printable ASCII."""
    keys = []
    if secret is not None and secret.get_secret_value().strip():
        keys.append(checked_key(secret.get_secret_value().strip(), name))
    if path is not None:
        # NOTE: a configured but unreadable or empty key file fails the start: serving
        # without auth because a secret did not mount would be worse than not serving
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RuntimeError(f"{name}_file cannot be read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise RuntimeError(f"{name}_file is not UTF-8 text") from None
        from_file = [
            checked_key(line.strip(), f"{name}_file line {number}")
            for number, line in enumerate(text.split("\n"), start=1)
            if line.strip() and not line.startswith("#")
        ]
        if not from_file:
            raise RuntimeError(f"{name}_file holds no key")
        keys.extend(from_file)
    return keys


def grpc_authorizations(metadata: Any) -> list[str]:
    """The `authorization` values of a gRPC call's metadata (str, or bytes as latin-1)."""
    return [
        value if isinstance(value, str) else bytes(value).decode("latin-1")
        for name, value in metadata or ()
        if name.lower() == "authorization"
    ]


class ApiKeys:
    """The accepted keys: API keys (inference and model endpoints) and admin keys (the model
    repository API, and everything an API key may do). `enabled` when any is configured."""

    def __init__(self, keys: list[str], admin_keys: Sequence[str] = ()):
        self._keys = [key.encode() for key in keys]
        self._admin = [key.encode() for key in admin_keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The configured keys; RuntimeError (the server does not start) when a key file is
        unreadable or empty, or a key is not printable ASCII."""
        keys = keys_from(settings.api_key, settings.api_key_file, "api_key")
        admin = keys_from(settings.admin_key, settings.admin_key_file, "admin_key")
        return cls(keys, admin)

    @property
    def enabled(self) -> bool:
        return bool(self._keys or self._admin)

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    def needs_key(self, management: bool = False) -> bool:
        """Whether a call needs a key: management calls when any key is set, the others when
        API keys are set (admin keys alone leave inference open)."""
        return bool(self._keys or (management and self._admin))

    @staticmethod
    def _matches(presented: bytes, keys: list[bytes]) -> bool:
        matched = False
        for key in keys:  # all of them, always
            matched |= hmac.compare_digest(presented, key)
        return matched

    def check(self, authorization: str | None, management: bool = False) -> None:
        """Raise Unauthenticated unless `authorization` is "Bearer <a configured key>";
        Forbidden when a management call (with admin keys set) brings an API key."""
        if not self.needs_key(management):
            return
        presented = self._presented(authorization)
        admin = self._matches(presented, self._admin)
        user = self._matches(presented, self._keys)
        if management and self._admin:
            if admin:
                return
            if user:
                raise Forbidden(
                    "this API key may not manage models; the repository API needs an admin key"
                )
            raise Unauthenticated("invalid admin key")
        if not (admin or user):
            raise Unauthenticated("invalid API key")

    def is_admin(self, authorizations: Sequence[str]) -> bool:
        """Whether the request's one Authorization is an admin key (model uploads need one)."""
        if not self._admin or len(authorizations) != 1:
            return False
        try:
            presented = self._presented(authorizations[0])
        except Unauthenticated:
            return False
        return self._matches(presented, self._admin)

    @staticmethod
    def _presented(authorization: str | None) -> bytes:
        if not authorization:
            raise Unauthenticated("missing API key: send the header Authorization: Bearer <key>")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected Bearer <key>")
        if not token.isascii():  # keys are ASCII (checked_key): it cannot match
            raise Unauthenticated("invalid API key")
        return token.strip().encode()

    def check_all(self, authorizations: Sequence[str], management: bool = False) -> None:
        """check() for every Authorization a request carries: more than one is refused (which
        one would count is not for the client to guess)."""
        if len(authorizations) > 1:
            raise Unauthenticated("only one Authorization header is allowed")
        self.check(authorizations[0] if authorizations else None, management)
