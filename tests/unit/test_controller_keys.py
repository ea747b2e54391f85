"""Parsing OpenSSH public key lines and their SHA256 fingerprints."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from encom.controller.keys import InvalidKey, fingerprint, parse_public_key


def openssh_line(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "ssh-ed25519"),
        (rsa.generate_private_key(65537, 2048), "ssh-rsa"),
        (ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256"),
        (ec.generate_private_key(ec.SECP384R1()), "ecdsa-sha2-nistp384"),
        (ec.generate_private_key(ec.SECP521R1()), "ecdsa-sha2-nistp521"),
    ],
)
def test_supported_key_types_parse(key: ed25519.Ed25519PrivateKey, kind: str) -> None:
    line = openssh_line(key)
    parsed = parse_public_key(f"  {line}  me@laptop with spaces \n")
    assert (parsed.type, parsed.line, parsed.comment) == (kind, line, "me@laptop with spaces")


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c", "-f", str(path)], check=True)
    printed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
    parsed = parse_public_key(Path(f"{path}.pub").read_text())
    assert parsed.fingerprint == printed.stdout.split()[1]
    assert "=" not in parsed.fingerprint


def test_fingerprint_has_no_padding() -> None:
    # sha256(b"x") in base64 is "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE=": 32 bytes always leave one "=".
    assert fingerprint(b"x") == "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE"


def test_security_key_type_parses() -> None:
    blob = ssh_string(b"sk-ssh-ed25519@openssh.com") + ssh_string(b"k" * 32) + ssh_string(b"ssh:")
    parsed = parse_public_key("sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode())
    assert parsed.type == "sk-ssh-ed25519@openssh.com"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "expected"),
        ("ssh-ed25519", "expected"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "unsupported key type"),
        ("ssh-ed25519 not*base64", "base64"),
        ("ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x10short").decode(), "truncated"),
        ("ssh-rsa " + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"k" * 32)).decode(), "not 'ssh-rsa'"),
        ("ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"k" * 31)).decode(), "32 bytes"),
        ("ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519")).decode(), "fields"),
        (
            "ecdsa-sha2-nistp256 "
            + base64.b64encode(
                ssh_string(b"ecdsa-sha2-nistp256") + ssh_string(b"nistp384") + ssh_string(b"q")
            ).decode(),
            "curve nistp256",
        ),
    ],
)
def test_bad_keys_say_what_is_wrong(line: str, problem: str) -> None:
    with pytest.raises(InvalidKey, match=problem):
        parse_public_key(line)
