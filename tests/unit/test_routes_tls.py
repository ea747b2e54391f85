"""A route's own TLS certificate: parsing, key match, domain coverage (wildcards), and the helpers the
integration tests use to make certificates."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from encom.api.errors import ValidationError
from encom.controller.routes import check_tls, covers

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def key_pem(key: PrivateKey, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_cert(
    names: list[str],
    *,
    key: PrivateKey | None = None,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    days: int = 30,
    ca: bool = False,
) -> tuple[x509.Certificate, PrivateKey]:
    """A certificate for DNS `names` (none: no subjectAltName), self-signed unless `issuer` is given;
    `days` < 0 makes an expired one."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "no names")])
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(days=10), now + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def tls_pair(*names: str) -> tuple[str, str]:
    """(certificate PEM, key PEM) of a new self-signed certificate for `names`."""
    cert, key = make_cert(list(names))
    return cert_pem(cert), key_pem(key)


@pytest.mark.parametrize(
    ("name", "domain", "covered"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com.", "example.com", True),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "*.example.com", True),
        ("www.example.com", "*.example.com", False),
        ("*.com", "example.com", True),
        ("other.com", "example.com", False),
        ("*.example.com", "wwwexample.com", False),
    ],
)
def test_covers(name: str, domain: str, covered: bool) -> None:
    assert covers(name, domain) is covered


def test_a_valid_certificate_is_normalised() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, key = make_cert(["example.com", "www.example.com"], key=rsa_key)
    # Text around the blocks (as `openssl pkcs12` writes it) and a traditional RSA key are fine.
    given_cert = "Bag Attributes\n" + cert_pem(cert)
    given_key = key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert given_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    chain, pem_key = check_tls("www.example.com", given_cert, given_key)
    assert chain == cert_pem(cert)
    assert pem_key == key_pem(key)


def test_a_chain_keeps_its_intermediates_in_order() -> None:
    root = make_cert(["root"], ca=True)
    intermediate = make_cert(["intermediate"], issuer=root, ca=True)
    leaf, key = make_cert(["*.example.com"], issuer=intermediate)
    given = cert_pem(leaf) + cert_pem(intermediate[0])
    chain, _ = check_tls("api.example.com", given, key_pem(key))
    assert chain == given
    assert len(x509.load_pem_x509_certificates(chain.encode())) == 2


def test_errors_name_the_problem() -> None:
    cert, key = tls_pair("a.com", "b.com")
    other_cert, other_key = tls_pair("www.example.com")
    with pytest.raises(ValidationError, match=r"^certificate does not match its key$"):
        check_tls("a.com", cert, other_key)
    with pytest.raises(ValidationError) as wrong:
        check_tls("www.example.com", cert, key)
    assert wrong.value.message == 'certificate is not valid for "www.example.com" (it covers: a.com, b.com)'
    with pytest.raises(ValidationError, match="not a PEM certificate"):
        check_tls("a.com", "hello", key)
    with pytest.raises(ValidationError, match="not a PEM certificate"):
        check_tls("a.com", cert.replace("A", "B", 5), key)
    with pytest.raises(ValidationError, match="key is not a PEM private key"):
        check_tls("a.com", cert, "not a key")
    with pytest.raises(ValidationError, match="key is not a PEM private key"):
        check_tls("a.com", cert, other_cert)  # a certificate where the key goes


def test_an_encrypted_key_is_refused_without_echoing_it() -> None:
    cert, key = make_cert(["a.com"])
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    with pytest.raises(ValidationError, match="key is encrypted") as info:
        check_tls("a.com", cert_pem(cert), encrypted)
    assert "PRIVATE KEY" not in info.value.message


def test_no_dns_names_and_expired() -> None:
    bare, key = make_cert([])
    with pytest.raises(ValidationError, match=r'not valid for "a.com" \(it names no DNS names'):
        check_tls("a.com", cert_pem(bare), key_pem(key))
    expired, key = make_cert(["a.com"], days=-1)
    with pytest.raises(ValidationError, match=r"^certificate expired on \d{4}-\d\d-\d\d"):
        check_tls("a.com", cert_pem(expired), key_pem(key))


def test_sizes_are_bounded() -> None:
    cert, key = tls_pair("a.com")
    with pytest.raises(ValidationError, match="certificate is larger than"):
        check_tls("a.com", cert * 200, key)
    with pytest.raises(ValidationError, match="key is larger than"):
        check_tls("a.com", cert, key * 200)
