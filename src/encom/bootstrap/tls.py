"""The cluster CA and the certificates it signs (controller API; later the router's wildcard certificate)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from encom.api.client import cert_pin
from encom.api.files import write_private
from encom.api.settings import Settings

CA_YEARS = 10
CERT_YEARS = 5


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "encom"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def create_ca(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("encom cluster CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def issue_cert(ca_cert_path: Path, ca_key_path: Path, names: list[str], cert_path: Path, key_path: Path) -> None:
    """A server certificate for DNS names and IP addresses, signed by the cluster CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for n in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt_names.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=365 * CERT_YEARS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM) + ca_cert_path.read_bytes())


def controller_cert_paths(settings: Settings) -> tuple[Path, Path]:
    return settings.tls_dir / "controller.pem", settings.tls_dir / "controller-key.pem"


def router_cert_paths(settings: Settings) -> tuple[Path, Path]:
    """The wildcard certificate for `*.<domain>` served by the router on HTTPS."""
    return settings.tls_dir / "router.pem", settings.tls_dir / "router-key.pem"


def ensure_tls(settings: Settings) -> None:
    """Create the CA and the certificates that are missing. Idempotent."""
    ca_cert, ca_key = settings.ca_cert_path, settings.tls_dir / "ca-key.pem"
    if not ca_cert.exists() or not ca_key.exists():
        create_ca(ca_cert, ca_key)
    cert, key = controller_cert_paths(settings)
    if not cert.exists() or not key.exists():
        names = ["localhost", settings.bind, "127.0.0.1", f"controller.{settings.domain}"]
        issue_cert(ca_cert, ca_key, list(dict.fromkeys(names)), cert, key)
    cert, key = router_cert_paths(settings)
    if not cert.exists() or not key.exists():
        issue_cert(ca_cert, ca_key, [settings.domain, f"*.{settings.domain}"], cert, key)


def controller_pin(settings: Settings) -> str:
    """The pin of the controller's certificate (its leaf, the first PEM block)."""
    cert = x509.load_pem_x509_certificate(controller_cert_paths(settings)[0].read_bytes())
    return cert_pin(cert.public_bytes(serialization.Encoding.DER))
