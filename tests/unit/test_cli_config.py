"""The CLI's configuration file and the cluster/app resolution around it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from encom.cli.config import ClusterConfig, Config, cert_path, config_path, load_config, save_config
from encom.cli.context import NO_APP, NO_CLUSTER, app_from_remote_url, remote_url, resolve_app, resolve_cluster
from encom.cli.main import cli
from encom.cli.output import CliError


def cluster(name: str, git_url: str = "ssh://git@127.0.0.1:2222") -> ClusterConfig:
    return ClusterConfig(name=name, url=f"https://{name}.example:8081", key="k-" + name, tls_pin="pin", git_url=git_url)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "xdg"


def test_config_round_trip_is_private_and_respects_xdg(xdg: Path) -> None:
    config = Config(default="b", clusters=[cluster("a"), cluster("b")])
    save_config(config)
    path = config_path()
    assert path == xdg / "encom" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config() == config
    assert cert_path("a") == xdg / "encom" / "a.pem"


def test_saving_over_a_readable_file_makes_it_private(xdg: Path) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("")
    path.chmod(0o644)
    path.parent.chmod(0o755)
    save_config(Config(default="a", clusters=[cluster("a")]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_config_dir_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path() == tmp_path / ".config" / "encom" / "config.toml"


def test_missing_config_is_empty(xdg: Path) -> None:
    assert load_config() == Config()


def test_removing_the_default_promotes_the_next() -> None:
    config = Config(default="a", clusters=[cluster("a"), cluster("b")])
    config.remove("a")
    assert config.default == "b"
    config.remove("b")
    assert config.default is None and config.default_cluster() is None


@pytest.mark.parametrize(
    ("url", "app"),
    [
        ("ssh://git@127.0.0.1:2222/example.git", "example"),
        ("ssh://git@127.0.0.1:2222/example", "example"),
        ("git@host.example:my-app.git", "my-app"),
        ("https://git.example.com/dir/other.git/", "other"),
    ],
)
def test_app_name_from_remote_url(url: str, app: str) -> None:
    assert app_from_remote_url(url) == app


def test_app_resolution_order() -> None:
    assert resolve_app("given", "ssh://git@h:2222/remote.git") == "given"
    assert resolve_app(None, "ssh://git@h:2222/remote.git") == "remote"
    with pytest.raises(CliError, match="no app given"):
        resolve_app(None, None)


def test_app_from_the_encom_remote_of_the_current_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "encom", "ssh://git@h:2222/from-git.git"], check=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_app(None, remote_url()) == "from-git"


def test_cluster_resolution() -> None:
    config = Config(default="b", clusters=[cluster("a", "ssh://git@a:2222"), cluster("b", "ssh://git@b:2222")])
    assert resolve_cluster(config, None).name == "b"
    assert resolve_cluster(config, "a").name == "a"
    assert resolve_cluster(config, None, "ssh://git@a:2222/app.git").name == "a"
    with pytest.raises(CliError, match='no cluster named "c"'):
        resolve_cluster(config, "c")
    with pytest.raises(CliError, match="no cluster configured"):
        resolve_cluster(Config(), None)


def test_no_cluster_error_through_the_cli(xdg: Path) -> None:
    result = CliRunner().invoke(cli, ["apps"])
    assert result.exit_code == 1
    assert result.stderr == f"error: {NO_CLUSTER}\n"
    assert "Traceback" not in result.output


def test_no_app_error_through_the_cli(xdg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_config(Config(default="a", clusters=[cluster("a")]))
    monkeypatch.chdir(tmp_path)  # not a git repo
    for args in (["ps"], ["env"], ["scale", "web=1"], ["info"], ["route"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, args
        assert result.stderr == f"error: {NO_APP}\n", args


def test_cluster_list_marks_the_default_and_hides_keys(xdg: Path) -> None:
    save_config(Config(default="b", clusters=[cluster("a"), cluster("b")]))
    result = CliRunner().invoke(cli, ["cluster"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "NAME         URL",
        "a            https://a.example:8081",
        "b (default)  https://b.example:8081",
    ]
    assert "k-a" not in result.output


def test_cluster_default_and_remove(xdg: Path) -> None:
    save_config(Config(default="a", clusters=[cluster("a"), cluster("b")]))
    runner = CliRunner()
    assert runner.invoke(cli, ["cluster", "default"]).stdout == "a\n"
    assert runner.invoke(cli, ["cluster", "default", "b"]).exit_code == 0
    assert load_config().default == "b"
    removed = runner.invoke(cli, ["cluster", "remove", "b"])
    assert removed.stdout == 'Cluster "b" removed.\n'
    assert load_config().default == "a"
    missing = runner.invoke(cli, ["cluster", "remove", "zz"])
    assert missing.exit_code == 1 and missing.stderr == 'error: no cluster named "zz"\n'


def test_app_flag_before_or_after_the_subcommand(xdg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an app given either way, resolution gets past the app to the (missing) certificate."""
    save_config(Config(default="a", clusters=[cluster("a")]))
    monkeypatch.chdir(tmp_path)
    for args in (
        ["-a", "foo", "ps"],
        ["ps", "-a", "foo"],
        ["env", "get", "-a", "foo", "K"],
        ["-c", "a", "info", "-a", "x"],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, args
        assert 'the certificate of cluster "a" is missing' in result.stderr, args
    result = CliRunner().invoke(cli, ["ps", "-a", "foo", "-c", "nope"])
    assert result.stderr == 'error: no cluster named "nope"; see "encom cluster"\n'
