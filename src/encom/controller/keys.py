"""OpenSSH public key lines (`<type> <base64> [comment]`): parsing, validation and SHA256 fingerprints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.types import Key
from encom.controller import convert, events
from encom.controller.models import KeyRow

ECDSA_CURVES = {
    "ecdsa-sha2-nistp256": "nistp256",
    "ecdsa-sha2-nistp384": "nistp384",
    "ecdsa-sha2-nistp521": "nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com": "nistp256",
}
# How many SSH "string" fields follow the type name in each key type's blob.
FIELD_COUNTS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    **{name: 2 if name.startswith("ecdsa") else 3 for name in ECDSA_CURVES},
}
KEY_TYPES = tuple(FIELD_COUNTS)


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode()

    @property
    def line(self) -> str:
        """The key without its comment: `<type> <base64>`."""
        return f"{self.type} {self.base64}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: bytes) -> str:
    """What `ssh-keygen -lf` prints: SHA256 of the key blob, base64 without padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _read_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire blob into its length-prefixed strings."""
    fields, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise InvalidKey("key data is truncated")
        (length,) = struct.unpack_from(">I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise InvalidKey("key data is truncated")
        fields.append(blob[offset : offset + length])
        offset += length
    return fields


def _check_fields(key_type: str, fields: list[bytes]) -> None:
    if len(fields) != FIELD_COUNTS[key_type]:
        raise InvalidKey(f"key data does not have the fields of a {key_type} key")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and len(fields[0]) != 32:
        raise InvalidKey("an ed25519 public key is 32 bytes")
    curve = ECDSA_CURVES.get(key_type)
    if curve is not None and fields[0].decode(errors="replace") != curve:
        raise InvalidKey(f"a {key_type} key must be on curve {curve}")


def _decode_blob(data: str) -> bytes:
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("the key data is not valid base64") from None
    if not blob:
        raise InvalidKey("the key data is empty")
    return blob


def parse_public_key(line: str) -> PublicKey:
    """Parse and validate one OpenSSH public key line, raising InvalidKey with the problem."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise InvalidKey('not an SSH public key: expected "<type> <base64 data> [comment]"')
    key_type, data = parts[0], parts[1]
    if key_type not in FIELD_COUNTS:
        raise InvalidKey(f"unsupported key type {key_type!r} (supported: {', '.join(KEY_TYPES)})")
    blob = _decode_blob(data)
    fields = _read_strings(blob)
    embedded = fields[0].decode(errors="replace")
    if embedded != key_type:
        raise InvalidKey(f"the key data is a {embedded!r} key, not {key_type!r}")
    _check_fields(key_type, fields[1:])
    comment = parts[2].strip() if len(parts) > 2 else ""
    return PublicKey(type=key_type, blob=blob, comment=comment)


# ---------------------------------------------------------------- records


def add_key(session: Session, line: str) -> Key:
    try:
        parsed = parse_public_key(line)
    except InvalidKey as exc:
        raise ValidationError(str(exc)) from None
    if session.get(KeyRow, parsed.fingerprint) is not None:
        raise Conflict(f"key {parsed.fingerprint} already exists")
    row = KeyRow(fingerprint=parsed.fingerprint, key_type=parsed.type, key=parsed.line, comment=parsed.comment)
    session.add(row)
    session.flush()
    key = convert.key(row)
    events.record(session, "key", row.fingerprint, key, None)
    return key


def list_keys(session: Session) -> list[Key]:
    return [convert.key(row) for row in session.scalars(select(KeyRow).order_by(KeyRow.created_at))]


def remove_key(session: Session, fingerprint: str) -> None:
    """By fingerprint, with or without its `SHA256:` prefix."""
    row = session.get(KeyRow, fingerprint) or session.get(KeyRow, "SHA256:" + fingerprint)
    if row is None:
        raise NotFound(f"key {fingerprint} not found")
    key = convert.key(row)
    session.delete(row)
    events.record(session, "key_deletion", fingerprint, key, None)
