"""Routes: validation (domains, paths, TCP ports) and their records."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.settings import Settings
from encom.api.types import Route, RouteCreate, service_name
from encom.controller import convert, events
from encom.controller.models import AppRow, RouteRow

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
PATH_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
MAX_DOMAIN = 253


def is_valid_domain(domain: str) -> bool:
    """Lowercase hostname labels (letters, digits, inner dashes; 1-63 each), optionally after a leading `*.`."""
    return len(domain) <= MAX_DOMAIN and DOMAIN_RE.match(domain) is not None


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
    if not PATH_RE.match(path):
        raise ValidationError(f'invalid route path "{path}"')
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    return path


def _check_http(session: Session, body: RouteCreate) -> tuple[str, str]:
    if body.port is not None:
        raise ValidationError("port is only for tcp routes")
    domain, path = check_domain(body.domain), normalize_path(body.path)
    taken = session.scalar(select(RouteRow.id).where(RouteRow.domain == domain, RouteRow.path == path))
    if taken is not None:
        raise Conflict("Duplicate route")
    return domain, path


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
    if body.port is None:
        return _free_port(session, settings)
    start, end = settings.ports.tcp_route_start, settings.ports.tcp_route_end
    if not start <= body.port <= end:
        raise ValidationError(f"tcp route port {body.port} is outside the range {start}-{end}")
    if session.scalar(select(func.count()).where(RouteRow.port == body.port)):
        raise Conflict(f"Duplicate route: tcp port {body.port} is already routed")
    return body.port


def create_route(session: Session, settings: Settings, app: AppRow, body: RouteCreate) -> Route:
    row = RouteRow(
        id=str(uuid.uuid4()),
        app_id=app.id,
        type=body.type,
        service=body.service or service_name(app.name, "web"),
        sticky=body.sticky,
    )
    if body.type == "http":
        row.domain, row.path = _check_http(session, body)
    else:
        row.path, row.port = "/", _check_tcp(session, settings, body)
    session.add(row)
    session.flush()
    route = convert.route(row)
    events.record(session, "route", row.id, route, app.id)
    return route


def add_default_route(session: Session, settings: Settings, app: AppRow) -> Route:
    return create_route(session, settings, app, RouteCreate(type="http", domain=f"{app.name}.{settings.domain}"))


def list_routes(session: Session, app_id: str | None = None) -> list[Route]:
    query = select(RouteRow).order_by(RouteRow.created_at, RouteRow.id)
    if app_id is not None:
        query = query.where(RouteRow.app_id == app_id)
    return [convert.route(row) for row in session.scalars(query)]


def _delete_row(session: Session, row: RouteRow) -> Route:
    route = convert.route(row)
    session.delete(row)
    events.record(session, "route_deletion", row.id, route, row.app_id)
    return route


def delete_route(session: Session, app: AppRow, ref: str) -> Route:
    """`ref` is `<uuid>` or `<type>/<uuid>`."""
    kind, _, route_id = ref.rpartition("/")
    row = session.get(RouteRow, route_id)
    if row is None or row.app_id != app.id or (kind and kind != row.type):
        raise NotFound(f'route "{ref}" not found')
    return _delete_row(session, row)


def delete_app_routes(session: Session, app: AppRow) -> int:
    rows = list(session.scalars(select(RouteRow).where(RouteRow.app_id == app.id)))
    for row in rows:
        _delete_row(session, row)
    return len(rows)
