"""The CLI's configuration: `$XDG_CONFIG_HOME/encom/config.toml` (clusters) and each cluster's pinned certificate."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from encom.api import files

CONFIG_FILE = "config.toml"
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ConfigError(Exception):
    """A configuration problem to show the user as is."""


@dataclass
class ClusterConfig:
    name: str
    url: str
    key: str
    tls_pin: str
    git_url: str


@dataclass
class Config:
    default: str | None = None
    clusters: list[ClusterConfig] = field(default_factory=list)

    def find(self, name: str) -> ClusterConfig | None:
        return next((c for c in self.clusters if c.name == name), None)

    def default_cluster(self) -> ClusterConfig | None:
        if self.default is not None and (found := self.find(self.default)) is not None:
            return found
        return self.clusters[0] if self.clusters else None

    def upsert(self, cluster: ClusterConfig) -> None:
        """Add `cluster`, or replace the one with its name in place."""
        for i, existing in enumerate(self.clusters):
            if existing.name == cluster.name:
                self.clusters[i] = cluster
                return
        self.clusters.append(cluster)

    def remove(self, name: str) -> None:
        """Remove a cluster; removing the default promotes the first remaining one."""
        self.clusters = [c for c in self.clusters if c.name != name]
        if self.default == name:
            self.default = self.clusters[0].name if self.clusters else None


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "encom"


def config_path() -> Path:
    return config_dir() / CONFIG_FILE


def cert_path(cluster_name: str) -> Path:
    """Where the pinned certificate of a cluster is kept, next to the config."""
    return config_dir() / f"{cluster_name}.pem"


def check_cluster_name(name: str) -> None:
    if not CLUSTER_NAME_RE.match(name):
        raise ConfigError(f'invalid cluster name "{name}": use letters, digits, ".", "_" and "-"')


def _cluster_from(data: Any) -> ClusterConfig:
    if not isinstance(data, dict):
        raise ConfigError("a [[cluster]] entry is not a table")
    try:
        return ClusterConfig(**{k: str(data[k]) for k in ("name", "url", "key", "tls_pin", "git_url")})
    except KeyError as exc:
        raise ConfigError(f"a [[cluster]] entry lacks {exc.args[0]!r}") from exc


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    default = data.get("default")
    return Config(
        default=str(default) if default is not None else None,
        clusters=[_cluster_from(c) for c in data.get("cluster", [])],
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (it holds the cluster keys)."""
    files.private_dir(path.parent)  # also an existing one: it holds the cluster keys and pinned certificates
    files.write_private(path, text)


def save_config(config: Config, path: Path | None = None) -> None:
    data: dict[str, Any] = {}
    if config.default is not None:
        data["default"] = config.default
    data["cluster"] = [asdict(c) for c in config.clusters]
    write_private(path or config_path(), tomli_w.dumps(data))
