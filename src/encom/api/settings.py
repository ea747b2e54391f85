"""Cluster settings: one file per data dir (`encomd.json`), written by bootstrap and read by every role."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from encom.api.files import private_dir, write_private

ALL_ROLES = ("discoverd", "blobstore", "host", "controller", "scheduler", "router", "gitreceive")
SETTINGS_FILE = "encomd.json"


class Ports(BaseModel):
    controller: int = 8081
    discoverd: int = 1111
    blobstore: int = 1112
    host: int = 1113
    router_http: int = 80
    router_https: int = 443
    gitreceive: int = 2222
    job_start: int = 55000
    job_end: int = 55999
    tcp_route_start: int = 3000
    tcp_route_end: int = 3500

    def shifted(self, offset: int) -> Ports:
        """The same layout moved by `offset` (tests run several clusters side by side on high ports)."""
        return Ports(**{name: value + offset for name, value in self.model_dump().items()})


class Settings(BaseModel):
    data_dir: Path
    bind: str = "127.0.0.1"
    domain: str = "encom.localhost"
    cluster_key: str = Field(default_factory=lambda: secrets.token_hex(16))
    internal_secret: str = Field(default_factory=lambda: secrets.token_hex(32))
    host_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    ports: Ports = Field(default_factory=Ports)
    roles: list[str] = Field(default_factory=lambda: list(ALL_ROLES))
    container_runtime: str = "runc"
    # Input bounds (issue 11). A formation, `encom scale` or a deploy asking for more processes of one type
    # is refused with a 400; the hosts' capacity is separate (what they cannot place waits as `pending`).
    max_processes_per_type: int = Field(default=100, ge=1, le=10_000)
    # The most a `git push` may send (bytes on the SSH channel); read at each push, so a change applies
    # without a restart. Also given to git as `receive.maxInputSize`.
    max_push_bytes: int = Field(default=1 << 30, ge=1 << 10)

    # Derived locations. Each component owns its own directory under data_dir.
    def dir(self, component: str) -> Path:
        return private_dir(self.data_dir / component)

    @property
    def tls_dir(self) -> Path:
        return self.dir("tls")

    @property
    def ca_cert_path(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def log_dir(self) -> Path:
        return self.dir("log")

    def url(self, role: str) -> str:
        """Where a role listens, as seen from this machine."""
        port = getattr(self.ports, role)
        scheme = "https" if role == "controller" else "http"
        return f"{scheme}://{self.bind}:{port}"

    @property
    def controller_url(self) -> str:
        return self.url("controller")

    @property
    def discoverd_url(self) -> str:
        return self.url("discoverd")

    @property
    def blobstore_url(self) -> str:
        return self.url("blobstore")

    @property
    def host_url(self) -> str:
        return self.url("host")

    def save(self) -> Path:
        private_dir(self.data_dir)
        path = self.data_dir / SETTINGS_FILE
        write_private(path, self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, data_dir: Path) -> Settings:
        path = data_dir / SETTINGS_FILE
        data = json.loads(path.read_text())
        data["data_dir"] = str(data_dir)
        return cls.model_validate(data)
