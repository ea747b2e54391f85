"""Routes: validation (domains, paths, TCP ports, TLS certificates) and their records."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.settings import Settings
from encom.api.types import (
    MAX_ROUTE_PATH,
    EventType,
    Route,
    RouteCreate,
    RouteUpdate,
    check_service,
    service_name,
    shown,
    utcnow,
)
from encom.controller import convert, events
from encom.controller.models import AppRow, RouteRow

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
PATH_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
MAX_DOMAIN = 253
MAX_CERTIFICATE = 64 * 1024  # a PEM chain; real ones are a few KiB
MAX_KEY = 16 * 1024
REDIRECT_HTTPS = "redirect_https"  # app meta key: "true" makes every http route of the app redirect to https


def _record(session: Session, kind: EventType, route: Route) -> None:
    """A route event without the private key: events are kept and streamed; the key stays in the route's row
    (the router fetches it from `GET /routes`)."""
    events.record(session, kind, route.id, route.model_copy(update={"key": None}), route.app_id)


def is_valid_domain(domain: str) -> bool:
    """Lowercase hostname labels (letters, digits, inner dashes; 1-63 each), optionally after a leading `*.`."""
    return len(domain) <= MAX_DOMAIN and DOMAIN_RE.fullmatch(domain) is not None


def check_domain(domain: str | None) -> str:
    """The domain, lowercased and without a trailing dot (hostnames are case-insensitive), or a 400."""
    domain = (domain or "").strip().lower().removesuffix(".")
    if not domain:
        raise ValidationError("an http route needs a domain")
    if not is_valid_domain(domain):
        raise ValidationError(
            f'invalid domain "{domain}": use lowercase hostname labels (a-z, 0-9, inner dashes) separated by '
            'dots, optionally starting with "*."'
        )
    return domain


def normalize_path(path: str | None) -> str:
    """`api` → `/api/`: paths start and end with a slash so prefixes match whole segments."""
    path = (path or "/").strip()
    if len(path) > MAX_ROUTE_PATH:
        raise ValidationError(f"a route path is at most {MAX_ROUTE_PATH} characters, not {len(path)}")
    if not PATH_RE.fullmatch(path):
        raise ValidationError(f"invalid route path {shown(path)}")
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    return path


# ---------------------------------------------------------------- TLS certificates


def covers(name: str, domain: str) -> bool:
    """Whether a certificate's DNS name covers `domain`: equal, or `*.b.c` for `a.b.c` (one label only, as
    RFC 6125 says). A wildcard route `*.b.c` is covered only by the wildcard name `*.b.c` itself."""
    name = name.strip().lower().removesuffix(".")
    if name == domain:
        return True
    if not name.startswith("*.") or domain.startswith("*."):
        return False
    label, dot, rest = domain.partition(".")
    return bool(label and dot) and rest == name[2:]


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_tls(domain: str, certificate: str, key: str, now: datetime | None = None) -> tuple[str, str]:
    """Check a PEM chain and its private key for `domain`; the normalised PEMs (the chain's certificates as
    given, leaf first; the key as unencrypted PKCS#8), or a 400 naming the problem. Nothing of the key ever
    goes into an error message."""
    if len(certificate) > MAX_CERTIFICATE:
        raise ValidationError(f"certificate is larger than {MAX_CERTIFICATE // 1024} KiB")
    if len(key) > MAX_KEY:
        raise ValidationError(f"key is larger than {MAX_KEY // 1024} KiB")
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        raise ValidationError("certificate is not a PEM certificate (or chain of them)") from None
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except TypeError:  # encrypted
        raise ValidationError("key is encrypted: give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError("key is not a PEM private key") from None
    leaf = chain[0]
    try:
        leaf_public = _public_der(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError("certificate has a public key of an unsupported type") from None
    if leaf_public != _public_der(private.public_key()):
        raise ValidationError("certificate does not match its key")
    names = dns_names(leaf)
    if not any(covers(name, domain) for name in names):
        covered = f"it covers: {', '.join(names)}" if names else "it names no DNS names (subjectAltName)"
        raise ValidationError(f'certificate is not valid for "{domain}" ({covered})')
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise ValidationError(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    pem_chain = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain).decode()
    pem_key = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem_chain, pem_key


def _given(value: str | None) -> bool:
    return value is not None and value.strip() != ""


def _check_pair(certificate: str | None, key: str | None) -> bool:
    """Whether a certificate and its key were given (both, or neither: anything else is a 400)."""
    if _given(certificate) and not _given(key):
        raise ValidationError("a certificate needs its key")
    if _given(key) and not _given(certificate):
        raise ValidationError("a key needs its certificate")
    return _given(certificate)


# ---------------------------------------------------------------- checks


def _check_http(session: Session, body: RouteCreate) -> tuple[str, str]:
    if body.port is not None:
        raise ValidationError("port is only for tcp routes")
    domain, path = check_domain(body.domain), normalize_path(body.path)
    taken = session.scalar(select(RouteRow.id).where(RouteRow.domain == domain, RouteRow.path == path))
    if taken is not None:
        raise Conflict("Duplicate route")
    if path != "/" and _root_route(session, domain) is None:
        raise ValidationError(f'path routes of "{domain}" need its "/" route first')
    return domain, path


def _root_route(session: Session, domain: str) -> str | None:
    return session.scalar(select(RouteRow.id).where(RouteRow.domain == domain, RouteRow.path == "/"))


def _free_port(session: Session, settings: Settings) -> int:
    start, end = settings.ports.tcp_route_start, settings.ports.tcp_route_end
    used = set(session.scalars(select(RouteRow.port).where(RouteRow.port.is_not(None))))
    for port in range(start, end + 1):
        if port not in used:
            return port
    raise Conflict(f"no free TCP route port left in {start}-{end}")


def _check_tcp(session: Session, settings: Settings, body: RouteCreate) -> int:
    if body.domain:
        raise ValidationError("a domain is only for http routes")
    if normalize_path(body.path) != "/":
        raise ValidationError("a path is only for http routes")
    if body.sticky:
        raise ValidationError("sticky is for http routes")
    if _given(body.certificate) or _given(body.key):
        raise ValidationError("certificates are for http routes")
    if body.port is None:
        return _free_port(session, settings)
    start, end = settings.ports.tcp_route_start, settings.ports.tcp_route_end
    if not start <= body.port <= end:
        raise ValidationError(f"tcp route port {body.port} is outside the range {start}-{end}")
    if session.scalar(select(func.count()).where(RouteRow.port == body.port)):
        raise Conflict(f"Duplicate route: tcp port {body.port} is already routed")
    return body.port


# ---------------------------------------------------------------- records


def redirects_https(meta: dict[str, str] | None) -> bool:
    return (meta or {}).get(REDIRECT_HTTPS) == "true"


def to_route(row: RouteRow, app_meta: dict[str, str] | None) -> Route:
    """The wire route; `redirect_https` comes from the app's meta (http routes only)."""
    route = convert.route(row)
    route.redirect_https = row.type == "http" and redirects_https(app_meta)
    return route


def create_route(session: Session, settings: Settings, app: AppRow, body: RouteCreate) -> Route:
    row = RouteRow(
        id=str(uuid.uuid4()),
        app_id=app.id,
        type=body.type,
        service=check_service(body.service) if body.service is not None else service_name(app.name, "web"),
        sticky=body.sticky,
    )
    if body.type == "http":
        row.domain, row.path = _check_http(session, body)
        if _check_pair(body.certificate, body.key):
            assert body.certificate is not None and body.key is not None
            row.certificate, row.key = check_tls(row.domain, body.certificate, body.key)
    else:
        row.path, row.port = "/", _check_tcp(session, settings, body)
    session.add(row)
    session.flush()
    route = to_route(row, app.meta)
    _record(session, "route", route)
    return route


def add_default_route(session: Session, settings: Settings, app: AppRow) -> Route:
    return create_route(session, settings, app, RouteCreate(type="http", domain=f"{app.name}.{settings.domain}"))


def list_routes(session: Session, app_id: str | None = None) -> list[Route]:
    query = select(RouteRow, AppRow.meta).join(AppRow, AppRow.id == RouteRow.app_id)
    if app_id is not None:
        query = query.where(RouteRow.app_id == app_id)
    query = query.order_by(RouteRow.created_at, RouteRow.id)
    return [to_route(row, meta) for row, meta in session.execute(query)]


def _find(session: Session, app: AppRow, ref: str) -> RouteRow:
    """`ref` is `<uuid>` or `<type>/<uuid>`; another app's route is not found."""
    kind, _, route_id = ref.rpartition("/")
    row = session.get(RouteRow, route_id)
    if row is None or row.app_id != app.id or (kind and kind != row.type):
        raise NotFound(f'route "{ref}" not found')
    return row


def update_route(session: Session, app: AppRow, ref: str, body: RouteUpdate) -> Route:
    """Change what `body` gives: service, sticky, the certificate (both "" remove it). All checked first."""
    row = _find(session, app, ref)
    service = check_service(body.service) if body.service is not None else row.service
    if body.sticky and row.type != "http":
        raise ValidationError("sticky is for http routes")
    certificate, key = row.certificate, row.key
    if body.certificate is not None or body.key is not None:
        if row.type != "http":
            raise ValidationError("certificates are for http routes")
        if _check_pair(body.certificate, body.key):
            assert body.certificate is not None and body.key is not None and row.domain is not None
            certificate, key = check_tls(row.domain, body.certificate, body.key)
        else:
            certificate = key = None
    row.service, row.certificate, row.key = service, certificate, key
    if body.sticky is not None:
        row.sticky = body.sticky
    row.updated_at = utcnow()
    session.flush()
    route = to_route(row, app.meta)
    _record(session, "route", route)
    return route


def _delete_row(session: Session, row: RouteRow, app_meta: dict[str, str] | None) -> Route:
    route = to_route(row, app_meta)
    session.delete(row)
    _record(session, "route_deletion", route)
    return route


def delete_route(session: Session, app: AppRow, ref: str) -> Route:
    """`ref` is `<uuid>` or `<type>/<uuid>`. A domain's "/" route goes only after its path routes."""
    row = _find(session, app, ref)
    if row.type == "http" and row.path == "/":
        others = session.scalar(
            select(func.count()).where(RouteRow.domain == row.domain, RouteRow.path != "/", RouteRow.id != row.id)
        )
        if others:
            raise ValidationError(f'"{row.domain}" still has {others} path route(s): remove them before its "/" route')
    return _delete_row(session, row, app.meta)


def delete_app_routes(session: Session, app: AppRow) -> int:
    rows = list(session.scalars(select(RouteRow).where(RouteRow.app_id == app.id)))
    for row in rows:
        _delete_row(session, row, app.meta)
    return len(rows)


def record_http_routes(session: Session, app: AppRow) -> int:
    """A `route` event for each http route of the app (after a change of what they derive from its meta),
    so the router picks the change up."""
    rows: Iterable[RouteRow] = session.scalars(
        select(RouteRow).where(RouteRow.app_id == app.id, RouteRow.type == "http").order_by(RouteRow.created_at)
    )
    count = 0
    for row in rows:
        _record(session, "route", to_route(row, app.meta))
        count += 1
    return count
