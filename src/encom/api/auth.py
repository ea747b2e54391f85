"""Key authentication shared by every API: `Authorization: Bearer <key>` or HTTP Basic with the key as password."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Iterable

from fastapi import Request

from encom.api.errors import Unauthorized


def key_from_header(header: str | None) -> str | None:
    """The key carried by an Authorization header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def key_matches(given: str | None, accepted: Iterable[str]) -> bool:
    """Constant-time comparison against every accepted key."""
    if not given:
        return False
    found = False
    for key in accepted:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def require_key(*accepted: str) -> Callable[[Request], None]:
    """A FastAPI dependency that rejects requests without one of the accepted keys with 401."""
    keys = tuple(k for k in accepted if k)

    def check(request: Request) -> None:
        if not key_matches(key_from_header(request.headers.get("authorization")), keys):
            raise Unauthorized()

    return check


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
