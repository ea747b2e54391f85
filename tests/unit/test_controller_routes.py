"""Route domain and path validation."""

from __future__ import annotations

import pytest

from encom.api.errors import ValidationError
from encom.controller.routes import check_domain, is_valid_domain, normalize_path


@pytest.mark.parametrize(
    "domain",
    ["example.com", "localhost", "a.b-c.d9", "*.example.localhost", "x" * 63 + ".com", "123.example.com"],
)
def test_valid_domains(domain: str) -> None:
    assert is_valid_domain(domain)


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "Example.com",
        "bad_domain.com",
        "-lead.com",
        "trail-.com",
        "a..b",
        ".com",
        "*",
        "*.",
        "a.*.com",
        "**.com",
        "x" * 64 + ".com",
        ".".join(["abcdefghi"] * 26),
        "exa mple.com",
    ],
)
def test_invalid_domains(domain: str) -> None:
    assert not is_valid_domain(domain)


def test_check_domain_normalises_case_and_trailing_dot() -> None:
    assert check_domain("Example.COM.") == "example.com"
    with pytest.raises(ValidationError, match="needs a domain"):
        check_domain(None)
    with pytest.raises(ValidationError, match=r'invalid domain "bad_domain\.com"'):
        check_domain("bad_domain.com")


@pytest.mark.parametrize(
    ("given", "normalised"),
    [(None, "/"), ("", "/"), ("/", "/"), ("api", "/api/"), ("/api", "/api/"), ("api/", "/api/"), ("/a/b/", "/a/b/")],
)
def test_paths_start_and_end_with_a_slash(given: str | None, normalised: str) -> None:
    assert normalize_path(given) == normalised


def test_bad_path_is_rejected() -> None:
    with pytest.raises(ValidationError, match="invalid route path"):
        normalize_path("/a b")
