"""gitreceive's pure parts: the SSH command, the pushed refs, the build result, the release's process types."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from encom.api.settings import Settings
from encom.api.types import ProcessType, Release, Resources
from encom.blobstore.client import blob_signature
from encom.bootstrap.tls import ensure_tls
from encom.gitreceive.receiver import (
    ZERO_SHA,
    PushFailed,
    Receiver,
    RefUpdate,
    build_env,
    deploy_update,
    parse_result,
    parse_updates,
    release_processes,
)
from encom.gitreceive.service import PushRefused, parse_command

A, B = "a" * 40, "b" * 40


@pytest.mark.parametrize(
    "command",
    ["git-receive-pack 'example.git'", "git-receive-pack '/example.git'", "git-receive-pack /example.git",
     'git-receive-pack "example"'],
)  # fmt: skip
def test_receive_pack_commands_name_the_app(command: str) -> None:
    assert parse_command(command) == "example"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (None, "interactive sessions are not supported"),
        ("git-upload-pack 'example.git'", "command not allowed"),
        ("git-receive-pack 'example.git' extra", "command not allowed"),
        ("sh -c 'rm -rf /'", "command not allowed"),
        ("git-receive-pack '../etc.git'", "invalid repository"),
        ("git-receive-pack 'Example.git'", "invalid repository"),
        ("git-receive-pack 'unclosed", "invalid command"),
    ],
)
def test_other_commands_are_refused(command: str | None, message: str) -> None:
    with pytest.raises(PushRefused, match=message):
        parse_command(command)


def test_master_then_main_deploy_and_deletions_do_not() -> None:
    updates = parse_updates(f"{A} {B} refs/heads/main\n{A} {B} refs/heads/master\ngarbage\n")
    assert deploy_update(updates) == RefUpdate(A, B, "refs/heads/master")
    assert deploy_update(parse_updates(f"{ZERO_SHA} {B} refs/heads/main\n")) == RefUpdate(
        ZERO_SHA, B, "refs/heads/main"
    )
    assert deploy_update(parse_updates(f"{A} {ZERO_SHA} refs/heads/master\n")) is None
    assert deploy_update(parse_updates(f"{A} {B} refs/heads/feature\n")) is None


def test_build_result_is_validated() -> None:
    assert parse_result(b'{"processes": {"web": "gunicorn app:app"}, "buildpack": "python"}') == {
        "web": "gunicorn app:app"
    }
    for bad in (b"not json", b'{"processes": ["web"]}', b'{"processes": {"web": 1}}', b"{}"):
        with pytest.raises(PushFailed, match="invalid result"):
            parse_result(bad)
    with pytest.raises(PushFailed, match="invalid process type"):
        parse_result(b'{"processes": {"we b": "x"}}')


def test_release_keeps_each_types_env_and_resources() -> None:
    previous = Release.model_validate(
        {
            "id": "r1",
            "version": 1,
            "app_id": "a",
            "created_at": "2026-01-01T00:00:00Z",
            "processes": {"web": ProcessType(cmd="old", env={"X": "1"}, resources=Resources(memory=256 << 20))},
        }
    )
    processes = release_processes({"web": "new", "worker": "w"}, previous)
    assert processes["web"].cmd == "new" and processes["web"].env == {"X": "1"}
    assert processes["web"].resources.memory == 256 << 20
    assert processes["worker"] == ProcessType(cmd="w")


def test_build_vars_win_over_release_env() -> None:
    env = build_env({"SLUG_URL": "signed"}, "abc", {"SLUG_URL": "mine", "GREETING": "hi"})
    assert env["SLUG_URL"] == "signed" and env["GREETING"] == "hi" and env["SOURCE_VERSION"] == "abc"
    assert env["ENCOM_ENV_KEYS"] == "SLUG_URL,GREETING"


async def test_a_build_gets_no_write_credential(tmp_path: Path) -> None:
    """Only signed GETs of the app's own source and cache; the outputs go to the app's own paths, by the host."""
    settings = Settings(data_dir=tmp_path)
    ensure_tls(settings)
    receiver = Receiver(settings, "app-1", "myapp", "abc123")
    try:
        spec = receiver.job_spec(None)
    finally:
        await receiver.aclose()
    urls = {key: urlsplit(value) for key, value in spec.env.items() if "://" in value}
    assert sorted(urls) == ["CACHE_URL", "SOURCE_URL"]
    for url in urls.values():
        query = parse_qs(url.query)
        signature = blob_signature(settings.internal_secret, "GET", url.path, int(query["exp"][0]))
        assert query["sig"] == [signature]  # a GET, and nothing else
    build = receiver.paths.build_id
    assert spec.builder and spec.outputs == {
        "slug": f"slugs/app-1/{build}.tgz",
        "cache": "caches/app-1.tar",
        "result": f"builds/app-1/{build}.json",
    }
