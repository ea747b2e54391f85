"""`app.json` health checks, in Dokku's format, turned into encom's `HealthCheck` per process type.

The file comes from the pusher, so it is read defensively (size limit, strict JSON, every key checked) and
every problem is an `AppJsonError` whose message is shown on `git push` as is.

Only the `healthchecks` section is read; the rest of `app.json` (Heroku's name, env, scripts, ...) is ignored:

    {"healthchecks": {"web": [{"type": "startup", "path": "/health", "timeout": 5, "attempts": 3}]}}

`healthchecks` maps a process type of the Procfile to a list of checks (or to a single check object). encom
supports one check per process type, for web types only ("web" or ending in "-web": the others get no port).

How a Dokku check maps to a `HealthCheck`:

- `path` given → an HTTP GET of that path on `$PORT`, which must answer `status` (encom's extension to
  Dokku's format: an integer 100-599, default 200). No `path` → a TCP connect to `$PORT`.
- `type`: "startup" (the default) and "readiness" both gate the job's registration for traffic, which is
  all encom does with a check; "liveness" (checks after start) is not supported.
- `start_timeout` (how long the check may take to pass) is Dokku's longest wait:
  `initialDelay + attempts * (timeout + wait)`, with Dokku's defaults for missing keys (initialDelay 0,
  attempts 3, timeout 5, wait 5). When none of the four is given, it is 60 s (Heroku's R10 boot timeout).
- `interval` (pause between attempts) is `wait` when given and above 0; otherwise encom's default (0.1 s).
  encom's host probes continuously until `start_timeout`; each attempt has the host's own short timeout.
- `name` is accepted (a string) and unused.
- Dokku's `command`, `content`, `port`, `listening`, `uptime`, `httpHeaders`, `scheme`, `onFailure` and
  `warn` are rejected as not supported by encom, and any other key as unknown: nothing is silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from encom.api.types import HealthCheck, is_web_type

MAX_SIZE = 64 * 1024
MAX_SECONDS = 3600
MAX_ATTEMPTS = 1000
MAX_PATH = 1024
TIMING_KEYS = ("initialDelay", "attempts", "timeout", "wait")
DOKKU_DEFAULTS: dict[str, float] = {"initialDelay": 0, "attempts": 3, "timeout": 5, "wait": 5}
KNOWN_KEYS = frozenset({"type", "name", "path", "status", *TIMING_KEYS})
UNSUPPORTED_KEYS: dict[str, str] = {
    "command": "it runs HTTP and TCP checks only",
    "content": 'it checks the HTTP status only, see "status"',
    "port": "it checks the $PORT it gives the job",
    "listening": 'a check without "path" already is a TCP check of $PORT',
    "uptime": "it checks the port, not the process uptime",
    "httpHeaders": "it sends no extra headers",
    "scheme": "it checks over plain HTTP",
    "onFailure": "a failed check fails the deploy",
    "warn": "every check must pass",
}
CHECK_TYPES = ("startup", "readiness")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class AppJsonError(Exception):
    """A problem with the pushed app.json; the message is meant for the pusher."""


@dataclass(frozen=True)
class RawCheck:
    """One check object as written, with where it is in the file (`healthchecks.web[0]`) for messages."""

    where: str
    keys: Mapping[str, Any]


# ---------------------------------------------------------------- message helpers


def _quote(value: Any, limit: int = 64) -> str:
    """A value as ASCII JSON (control characters, non-ASCII and lone surrogates escaped), shortened: user input
    echoed back in a message."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _key_path(process_type: str) -> str:
    name = process_type if _PLAIN_KEY.match(process_type) else _quote(process_type)
    return f"healthchecks.{name}"


# ---------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise AppJsonError(f"app.json is not valid JSON: {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise AppJsonError(f"app.json is not valid JSON: duplicate key {_quote(key)}")
        result[key] = value
    return result


def _load(data: bytes) -> Any:
    if len(data) > MAX_SIZE:
        raise AppJsonError(f"app.json is too large: {len(data)} bytes (at most {MAX_SIZE})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AppJsonError(f"app.json is not valid UTF-8: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise AppJsonError(f"app.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise AppJsonError("app.json is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise AppJsonError(f"app.json is not valid JSON: {exc}") from None


def _raw_checks(process_type: str, value: Any) -> list[RawCheck]:
    where = _key_path(process_type)
    if isinstance(value, dict):
        return [RawCheck(where, value)]
    if not isinstance(value, list):
        raise AppJsonError(f"app.json: {where} must be a list of checks or one check object, not {_kind(value)}")
    checks = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise AppJsonError(f"app.json: {where}[{index}] must be an object, not {_kind(item)}")
        checks.append(RawCheck(f"{where}[{index}]", item))
    return checks


def parse_app_json(data: bytes | None) -> dict[str, list[RawCheck]]:
    """The `healthchecks` of an app.json's content, per process type; {} when there is no file or section.

    Checks the structure only; `health_checks` validates the checks themselves against the Procfile."""
    if data is None:
        return {}
    document = _load(data)
    if not isinstance(document, dict):
        raise AppJsonError(f"app.json must be a JSON object, not {_kind(document)}")
    if "healthchecks" not in document:
        return {}
    section = document["healthchecks"]
    if not isinstance(section, dict):
        raise AppJsonError(
            f"app.json: healthchecks must be an object mapping process types to checks, not {_kind(section)}"
        )
    return {process_type: _raw_checks(process_type, value) for process_type, value in section.items()}


# ---------------------------------------------------------------- validation


def _check_keys(check: RawCheck) -> None:
    for key in check.keys:
        if key in UNSUPPORTED_KEYS:
            raise AppJsonError(f"app.json: {check.where}.{key} is not supported by encom ({UNSUPPORTED_KEYS[key]})")
        if key not in KNOWN_KEYS:
            known = ", ".join(sorted(KNOWN_KEYS, key=str.lower))
            raise AppJsonError(f"app.json: {check.where} has unknown key {_quote(key)} (known keys: {known})")


def _check_type(check: RawCheck) -> None:
    if "type" not in check.keys:
        return
    value = check.keys["type"]
    if value == "liveness":
        raise AppJsonError(
            f'app.json: {check.where}.type "liveness" is not supported by encom '
            '(checks only gate a new job\'s traffic; use "startup")'
        )
    if value not in CHECK_TYPES:
        raise AppJsonError(f'app.json: {check.where}.type must be "startup" or "readiness", not {_quote(value)}')


def _check_name(check: RawCheck) -> None:
    if "name" in check.keys and not isinstance(check.keys["name"], str):
        raise AppJsonError(f"app.json: {check.where}.name must be a string, not {_quote(check.keys['name'])}")


def _path(check: RawCheck) -> str | None:
    if "path" not in check.keys:
        return None
    value = check.keys["path"]
    where = f"{check.where}.path"
    if not isinstance(value, str):
        raise AppJsonError(f"app.json: {where} must be a string, not {_quote(value)}")
    if not value.startswith("/"):
        raise AppJsonError(f'app.json: {where} must start with "/"')
    if any(c.isspace() for c in value):
        raise AppJsonError(f"app.json: {where} must not contain whitespace")
    if not value.isascii() or not value.isprintable():
        raise AppJsonError(f"app.json: {where} must be printable ASCII (percent-encode other characters)")
    if len(value) > MAX_PATH:
        raise AppJsonError(f"app.json: {where} must be at most {MAX_PATH} characters")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _status(check: RawCheck, has_path: bool) -> int | None:
    if "status" not in check.keys:
        return None
    value = check.keys["status"]
    where = f"{check.where}.status"
    if not _is_int(value) or not 100 <= value <= 599:
        raise AppJsonError(f"app.json: {where} must be an integer from 100 to 599, not {_quote(value)}")
    if not has_path:
        raise AppJsonError(f'app.json: {where} needs "path" (a check without "path" is a TCP check)')
    return int(value)


def _attempts(check: RawCheck) -> int | None:
    if "attempts" not in check.keys:
        return None
    value = check.keys["attempts"]
    if not _is_int(value) or not 1 <= value <= MAX_ATTEMPTS:
        raise AppJsonError(
            f"app.json: {check.where}.attempts must be an integer from 1 to {MAX_ATTEMPTS}, not {_quote(value)}"
        )
    return int(value)


def _seconds(check: RawCheck, key: str) -> float | None:
    if key not in check.keys:
        return None
    value = check.keys[key]
    positive = key == "timeout"
    low_ok = _is_number(value) and (value > 0 if positive else value >= 0)
    if not low_ok or value > MAX_SECONDS:
        bounds = f"greater than 0 and at most {MAX_SECONDS}" if positive else f"from 0 to {MAX_SECONDS}"
        raise AppJsonError(f"app.json: {check.where}.{key} must be a number of seconds {bounds}, not {_quote(value)}")
    return float(value)


def _timing(check: RawCheck) -> dict[str, float]:
    """`start_timeout` and `interval` from Dokku's timing keys (see the module docstring)."""
    given: dict[str, float | None] = {
        "initialDelay": _seconds(check, "initialDelay"),
        "attempts": _attempts(check),
        "timeout": _seconds(check, "timeout"),
        "wait": _seconds(check, "wait"),
    }
    timing: dict[str, float] = {}
    wait = given["wait"]
    if wait is not None and wait > 0:
        timing["interval"] = wait
    if all(value is None for value in given.values()):
        return timing
    t = {key: DOKKU_DEFAULTS[key] if value is None else value for key, value in given.items()}
    timing["start_timeout"] = t["initialDelay"] + t["attempts"] * (t["timeout"] + t["wait"])
    return timing


_FIELD_SOURCES = {
    "path": "{where}.path",
    "status": "{where}.status",
    "interval": "{where}.wait",
    "start_timeout": "{where}: initialDelay + attempts * (timeout + wait) = {start_timeout:g}s",
}


def _build(check: RawCheck, fields: dict[str, Any]) -> HealthCheck:
    try:
        return HealthCheck.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        template = _FIELD_SOURCES.get(field, "{where}")
        source = template.format(where=check.where, start_timeout=fields.get("start_timeout", 0.0))
        raise AppJsonError(f"app.json: {source} is out of range: {error['msg']}") from None


def to_health_check(check: RawCheck) -> HealthCheck:
    """One Dokku check object as encom's `HealthCheck`."""
    _check_keys(check)
    _check_type(check)
    _check_name(check)
    path = _path(check)
    status = _status(check, has_path=path is not None)
    fields: dict[str, Any] = {"type": "tcp"} if path is None else {"type": "http", "path": path}
    if status is not None:
        fields["status"] = status
    fields.update(_timing(check))
    return _build(check, fields)


def _check_process_type(process_type: str, declared: list[str]) -> None:
    where = _key_path(process_type)
    if process_type not in declared:
        listing = f"Procfile declares: {', '.join(declared)}" if declared else "Procfile declares no process types"
        raise AppJsonError(f"app.json: healthchecks names unknown process type {_quote(process_type)} ({listing})")
    if not is_web_type(process_type):
        raise AppJsonError(
            f'app.json: {where}: checks apply to web process types only ("web" or ending in "-web"), '
            f"which get a port; {_quote(process_type)} does not"
        )


def health_checks(parsed: Mapping[str, list[RawCheck]], process_types: Iterable[str]) -> dict[str, HealthCheck]:
    """The `HealthCheck` of each process type that has one in `parsed` (from `parse_app_json`).

    `process_types` are the Procfile's; a process type without a check is absent from the result."""
    declared = sorted(set(process_types))
    result: dict[str, HealthCheck] = {}
    for process_type, checks in parsed.items():
        _check_process_type(process_type, declared)
        if len(checks) > 1:
            raise AppJsonError(
                f"app.json: {_key_path(process_type)} has {len(checks)} checks; "
                "encom supports one check per process type"
            )
        if checks:
            result[process_type] = to_health_check(checks[0])
    return result
