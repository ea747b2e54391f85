"""app.json health checks: Dokku's format parsed defensively and mapped to encom's HealthCheck."""

from __future__ import annotations

import json
from typing import Any

import pytest

from encom.api.types import HealthCheck
from encom.gitreceive.appjson import MAX_SIZE, AppJsonError, RawCheck, health_checks, parse_app_json

TYPES = ("web", "worker", "admin-web")


def checks_of(document: Any, types: tuple[str, ...] = TYPES) -> dict[str, HealthCheck]:
    return health_checks(parse_app_json(json.dumps(document).encode()), types)


def web_check(**keys: Any) -> HealthCheck:
    return checks_of({"healthchecks": {"web": [keys]}})["web"]


def error_of(document: Any, types: tuple[str, ...] = TYPES) -> str:
    with pytest.raises(AppJsonError) as info:
        checks_of(document, types)
    return str(info.value)


def check_error(**keys: Any) -> str:
    return error_of({"healthchecks": {"web": [keys]}})


# ---------------------------------------------------------------- valid configs


def test_absent_file_or_section_means_no_checks() -> None:
    assert parse_app_json(None) == {}
    assert health_checks(parse_app_json(None), TYPES) == {}
    assert checks_of({"name": "example", "env": {"X": {"value": "1"}}}) == {}
    assert checks_of({"healthchecks": {}}) == {}
    assert checks_of({"healthchecks": {"web": []}}) == {}


def test_path_makes_an_http_check() -> None:
    check = web_check(type="startup", name="web check", path="/health")
    assert check == HealthCheck(type="http", path="/health", status=200, start_timeout=60)


def test_no_path_makes_a_tcp_check() -> None:
    assert web_check(type="startup", name="port") == HealthCheck(type="tcp", start_timeout=60)
    assert web_check() == HealthCheck(type="tcp")


def test_readiness_gates_traffic_like_startup() -> None:
    assert web_check(type="readiness", path="/ready") == HealthCheck(type="http", path="/ready")


def test_single_object_is_accepted_and_named_without_index() -> None:
    parsed = parse_app_json(b'{"healthchecks": {"web": {"path": "/up"}}}')
    assert parsed == {"web": [RawCheck("healthchecks.web", {"path": "/up"})]}
    assert health_checks(parsed, TYPES) == {"web": HealthCheck(type="http", path="/up")}
    assert error_of({"healthchecks": {"web": {"path": "up"}}}) == 'app.json: healthchecks.web.path must start with "/"'


def test_status_extension() -> None:
    assert web_check(path="/", status=204).status == 204
    assert web_check(path="/", status=599).status == 599


def test_checks_for_every_web_type() -> None:
    checks = checks_of({"healthchecks": {"web": [{"path": "/a"}], "admin-web": [{}]}})
    assert checks == {"web": HealthCheck(type="http", path="/a"), "admin-web": HealthCheck(type="tcp")}


def test_timing_follows_dokku_with_its_defaults() -> None:
    # initialDelay + attempts * (timeout + wait); Dokku's defaults: 0, 3, 5, 5
    check = web_check(path="/h", initialDelay=10, attempts=4, timeout=2, wait=3)
    assert (check.start_timeout, check.interval) == (30, 3)
    assert web_check(timeout=5, attempts=3).start_timeout == 30
    assert web_check(attempts=10).start_timeout == 100
    assert web_check(initialDelay=20).start_timeout == 50
    assert web_check(timeout=0.5, wait=0.25, attempts=2).start_timeout == 1.5


def test_timing_defaults_without_timing_keys() -> None:
    check = web_check(path="/h")
    assert (check.start_timeout, check.interval) == (60, HealthCheck().interval)


def test_wait_zero_keeps_the_default_interval() -> None:
    check = web_check(wait=0, attempts=2)
    assert (check.start_timeout, check.interval) == (10, HealthCheck().interval)


def test_utf8_bom_is_accepted() -> None:
    parsed = parse_app_json(b'\xef\xbb\xbf{"healthchecks": {"web": {}}}')
    assert health_checks(parsed, TYPES) == {"web": HealthCheck()}


# ---------------------------------------------------------------- the file


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{\n  "healthchecks": {\n    "web": []\n    "x": 1}}',
         "app.json is not valid JSON: Expecting ',' delimiter (line 4, column 5)"),
        (b"", "app.json is not valid JSON: Expecting value (line 1, column 1)"),
        (b'{"a": NaN}', "app.json is not valid JSON: NaN is not allowed"),
        (b'{"a": -Infinity}', "app.json is not valid JSON: -Infinity is not allowed"),
        (b'{"healthchecks": {}, "healthchecks": {"web": []}}',
         'app.json is not valid JSON: duplicate key "healthchecks"'),
        (b"[" * 30000 + b"]" * 30000, "app.json is not valid JSON: nested too deeply"),
        (b"\xff{}",
         "app.json is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (b"[]", "app.json must be a JSON object, not an array"),
        (b'"x"', "app.json must be a JSON object, not a string"),
        (b"null", "app.json must be a JSON object, not null"),
    ],
)  # fmt: skip
def test_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(AppJsonError) as info:
        parse_app_json(data)
    assert str(info.value) == message


def test_huge_integer_is_an_error() -> None:
    with pytest.raises(AppJsonError, match=r"^app\.json is not valid JSON: "):
        parse_app_json(b'{"a": ' + b"9" * 5000 + b"}")


def test_size_limit() -> None:
    padding = b" " * (MAX_SIZE - 2)
    assert parse_app_json(b"{" + padding + b"}") == {}
    with pytest.raises(AppJsonError) as info:
        parse_app_json(b"{" + padding + b" }")
    assert str(info.value) == f"app.json is too large: {MAX_SIZE + 1} bytes (at most {MAX_SIZE})"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"healthchecks": []},
         "app.json: healthchecks must be an object mapping process types to checks, not an array"),
        ({"healthchecks": None}, "app.json: healthchecks must be an object mapping process types to checks, not null"),
        ({"healthchecks": {"web": "/health"}},
         "app.json: healthchecks.web must be a list of checks or one check object, not a string"),
        ({"healthchecks": {"web": [{}, 3]}}, "app.json: healthchecks.web[1] must be an object, not a number"),
        ({"healthchecks": {"web": [[]]}}, "app.json: healthchecks.web[0] must be an object, not an array"),
        ({"healthchecks": {"we b": True}},
         'app.json: healthchecks."we b" must be a list of checks or one check object, not a boolean'),
    ],
)  # fmt: skip
def test_bad_structure(document: Any, message: str) -> None:
    with pytest.raises(AppJsonError) as info:
        parse_app_json(json.dumps(document).encode())
    assert str(info.value) == message


# ---------------------------------------------------------------- process types


def test_unknown_process_type() -> None:
    message = error_of({"healthchecks": {"wbe": [{}]}}, ("worker", "web"))
    assert message == 'app.json: healthchecks names unknown process type "wbe" (Procfile declares: web, worker)'


def test_unknown_process_type_without_procfile_types() -> None:
    message = error_of({"healthchecks": {"web": [{}]}}, ())
    assert message == 'app.json: healthchecks names unknown process type "web" (Procfile declares no process types)'


def test_hostile_process_type_name_is_quoted_and_shortened() -> None:
    message = error_of({"healthchecks": {"\x1b[2J" + "x" * 200: [{}]}})
    assert message.startswith('app.json: healthchecks names unknown process type "\\u001b[2Jxxx')
    assert "..." in message
    assert len(message) < 200


def test_messages_stay_ascii_for_hostile_names() -> None:
    message = error_of({"healthchecks": {"w\u00e9b\ud800": [{}]}})
    assert message.isascii()
    assert message.startswith('app.json: healthchecks names unknown process type "w\\u00e9b\\ud800" (')
    assert check_error(**{"\ud800": 1}).endswith(
        'has unknown key "\\ud800" (known keys: attempts, initialDelay, name, path, status, timeout, type, wait)'
    )


def test_non_web_types_get_no_check() -> None:
    assert error_of({"healthchecks": {"worker": [{"path": "/"}]}}) == (
        'app.json: healthchecks.worker: checks apply to web process types only ("web" or ending in "-web"), '
        'which get a port; "worker" does not'
    )


def test_one_check_per_type() -> None:
    assert error_of({"healthchecks": {"web": [{"path": "/a"}, {"path": "/b"}]}}) == (
        "app.json: healthchecks.web has 2 checks; encom supports one check per process type"
    )


# ---------------------------------------------------------------- keys


def test_liveness_is_not_supported() -> None:
    assert check_error(type="liveness", path="/live") == (
        'app.json: healthchecks.web[0].type "liveness" is not supported by encom '
        '(checks only gate a new job\'s traffic; use "startup")'
    )


@pytest.mark.parametrize("value", ["Startup", "", None, 1])
def test_bad_type(value: Any) -> None:
    assert check_error(type=value) == (
        f'app.json: healthchecks.web[0].type must be "startup" or "readiness", not {json.dumps(value)}'
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("command", ["/app/check.sh"]), ("content", "ok"), ("port", 8080), ("listening", True), ("uptime", 10),
     ("httpHeaders", []), ("scheme", "https"), ("onFailure", {}), ("warn", False)],
)  # fmt: skip
def test_dokku_keys_encom_does_not_support(key: str, value: Any) -> None:
    message = check_error(path="/", **{key: value})
    assert message.startswith(f"app.json: healthchecks.web[0].{key} is not supported by encom (")


def test_unsupported_key_messages_say_why() -> None:
    assert check_error(content="ok") == (
        'app.json: healthchecks.web[0].content is not supported by encom (it checks the HTTP status only, see "status")'
    )
    assert check_error(port=8080) == (
        "app.json: healthchecks.web[0].port is not supported by encom (it checks the $PORT it gives the job)"
    )


def test_unknown_key() -> None:
    assert check_error(pth="/health") == (
        'app.json: healthchecks.web[0] has unknown key "pth" '
        "(known keys: attempts, initialDelay, name, path, status, timeout, type, wait)"
    )


def test_name_must_be_a_string() -> None:
    assert check_error(name=3) == "app.json: healthchecks.web[0].name must be a string, not 3"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("health", 'must start with "/"'),
        ("", 'must start with "/"'),
        ("/a b", "must not contain whitespace"),
        ("/a\nb", "must not contain whitespace"),
        ("/caf\u00e9", "must be printable ASCII (percent-encode other characters)"),
        ("/a\u0000b", "must be printable ASCII (percent-encode other characters)"),
        ("/\ud800", "must be printable ASCII (percent-encode other characters)"),
        ("/" + "a" * 1024, "must be at most 1024 characters"),
        (5, "must be a string, not 5"),
        (None, "must be a string, not null"),
    ],
)
def test_bad_path(path: Any, message: str) -> None:
    assert check_error(path=path) == f"app.json: healthchecks.web[0].path {message}"


@pytest.mark.parametrize("status", [99, 600, "200", True, 200.0, None])
def test_bad_status(status: Any) -> None:
    assert check_error(path="/", status=status) == (
        f"app.json: healthchecks.web[0].status must be an integer from 100 to 599, not {json.dumps(status)}"
    )


def test_status_needs_a_path() -> None:
    assert check_error(status=204) == (
        'app.json: healthchecks.web[0].status needs "path" (a check without "path" is a TCP check)'
    )


@pytest.mark.parametrize("attempts", [0, -1, 1.5, "3", True, None, 1001])
def test_bad_attempts(attempts: Any) -> None:
    assert check_error(attempts=attempts) == (
        f"app.json: healthchecks.web[0].attempts must be an integer from 1 to 1000, not {json.dumps(attempts)}"
    )


@pytest.mark.parametrize("timeout", [0, -1, "5", False, None, 3601, 1e300])
def test_bad_timeout(timeout: Any) -> None:
    assert check_error(timeout=timeout) == (
        "app.json: healthchecks.web[0].timeout must be a number of seconds greater than 0 and at most 3600, "
        f"not {json.dumps(timeout)}"
    )


@pytest.mark.parametrize("key", ["wait", "initialDelay"])
@pytest.mark.parametrize("value", [-1, -0.5, "5", True, None, [], 3601])
def test_bad_wait_and_initial_delay(key: str, value: Any) -> None:
    assert check_error(**{key: value}) == (
        f"app.json: healthchecks.web[0].{key} must be a number of seconds from 0 to 3600, not {json.dumps(value)}"
    )


def test_wait_beyond_the_interval_bound_names_wait() -> None:
    assert check_error(wait=61, attempts=1) == (
        "app.json: healthchecks.web[0].wait is out of range: Input should be less than or equal to 60"
    )


def test_wait_below_the_interval_bound_names_wait() -> None:
    assert check_error(wait=0.001) == (
        "app.json: healthchecks.web[0].wait is out of range: Input should be greater than or equal to 0.01"
    )


def test_start_timeout_beyond_the_bound_names_the_formula() -> None:
    assert check_error(attempts=100, timeout=30, wait=10) == (
        "app.json: healthchecks.web[0]: initialDelay + attempts * (timeout + wait) = 4000s is out of range: "
        "Input should be less than or equal to 3600"
    )
