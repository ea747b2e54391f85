"""Wire types: every JSON body that crosses a component boundary is one of these, used by both sides."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

APP_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # a host name label: <app>.<domain> is routed
APP_NAME_RULE = (
    "app name must start with a lowercase letter, end with a letter or digit and contain only lowercase letters, "
    "digits and dashes (at most 63 characters)"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def service_name(app_name: str, process_type: str) -> str:
    """The discoverd service of an app's HTTP process type: `<app>-web`, `<app>-admin-web`."""
    return f"{app_name}-{process_type}"


def is_web_type(process_type: str) -> bool:
    return process_type == "web" or process_type.endswith("-web")


class Wire(BaseModel):
    # str_min_length=0 changes no rule but makes pydantic check every string as Unicode, so a lone surrogate (valid
    # JSON: "\\ud800", which no UTF-8 response, file or runc config can carry) is a 400, never stored.
    model_config = ConfigDict(extra="ignore", str_min_length=0)


# ---------------------------------------------------------------- controller resources


class Resources(Wire):
    """Per-process limits. Units: bytes for memory/temp_disk, milli-CPU for cpu (1000 = one core)."""

    memory: int = 1 << 30
    cpu: int = 1000
    max_fd: int = 10000
    max_procs: int | None = None
    temp_disk: int = 100 << 20


class HealthCheck(Wire):
    """When a job with a port counts as started: TCP accept (the default for web types) or an HTTP answer."""

    type: Literal["tcp", "http"] = "tcp"
    path: str = Field(default="/", pattern=r"^/[^\s]*$", max_length=1024)
    status: int = Field(default=200, ge=100, le=599)
    interval: float = Field(default=0.1, ge=0.01, le=60)
    start_timeout: float = Field(default=60.0, gt=0, le=3600)  # Heroku's R10 boot timeout


class ProcessType(Wire):
    cmd: str  # the Procfile command, run with `bash -c` after sourcing /app/.profile.d/*
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    check: HealthCheck | None = None  # from app.json `healthchecks`; web types default to a TCP check


RELEASE_TYPE = "release"  # the Procfile's release phase: run once per deploy, never scaled


class AppCreate(Wire):
    name: str = Field(json_schema_extra={"pattern": APP_NAME_RE.pattern})  # documents _valid_name's rule

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not APP_NAME_RE.match(v):
            raise ValueError(APP_NAME_RULE)
        return v


DeployStrategy = Literal["one-by-one", "all-at-once"]
STRATEGIES: tuple[DeployStrategy, ...] = ("one-by-one", "all-at-once")
DEFAULT_STOP_GRACE = 30.0
MAX_STOP_GRACE = 3600.0


class App(Wire):
    """`meta` is free-form, except two deploy settings it also holds (validated when set):
    `strategy` (one-by-one | all-at-once; default one-by-one when the release has a web type) and
    `stop_grace` (seconds between SIGTERM and SIGKILL, default 30)."""

    id: str
    name: str
    release_id: str | None = None
    meta: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class AppUpdate(Wire):
    meta: dict[str, str | None]  # merged into the app's meta; None removes the key


class AppDeleted(Wire):
    app: App
    deleted_routes: int
    deleted_releases: int


class KeyCreate(Wire):
    key: str  # an OpenSSH public key line: "<type> <base64> [comment]"


class Key(Wire):
    fingerprint: str  # "SHA256:<base64 without padding>", as ssh-keygen -l prints it
    key: str
    comment: str = ""
    created_at: datetime


class ArtifactCreate(Wire):
    type: Literal["slug"] = "slug"
    url: str  # blobstore path of the slug tarball, e.g. "/slugs/<app-id>/<uuid>.tgz"
    meta: dict[str, str] = Field(default_factory=dict)


class Artifact(ArtifactCreate):
    id: str
    created_at: datetime


class ReleaseCreate(Wire):
    app_id: str
    artifact_id: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    processes: dict[str, ProcessType] = Field(default_factory=dict)
    meta: dict[str, str] = Field(default_factory=dict)


class Release(ReleaseCreate):
    id: str
    version: int  # v1, v2, ... per app
    created_at: datetime


class FormationUpdate(Wire):
    processes: dict[str, int]


class Formation(Wire):
    app_id: str
    release_id: str
    processes: dict[str, int]
    updated_at: datetime


class ExpandedFormation(Wire):
    """What the scheduler needs to run a formation: the app, the full release and its artifact."""

    app: App
    release: Release
    artifact: Artifact | None
    processes: dict[str, int]
    updated_at: datetime


class DeployRequest(Wire):
    release_id: str
    # Counts for the new release; when omitted, the current formation's counts are carried over.
    processes: dict[str, int] | None = None


DeploymentStatus = Literal["pending", "running", "complete", "failed"]


class Deployment(Wire):
    id: str
    app_id: str
    old_release_id: str | None
    new_release_id: str
    strategy: str
    status: DeploymentStatus
    processes: dict[str, int]  # the new release's counts
    old_processes: dict[str, int] = Field(default_factory=dict)  # the old release's, restored on failure
    release_job_id: str | None = None  # the release phase's one-off job, when the release has one
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


JobState = Literal["pending", "starting", "up", "stopping", "down", "crashed", "failed"]
ACTIVE_JOB_STATES = ("pending", "starting", "up", "stopping")
ENDED_JOB_STATES = ("down", "crashed", "failed")
RUNNING_HOST_STATES = ("starting", "up", "stopping")  # a host job whose container may be running


class Job(Wire):
    """A job as the controller records it (reported by the scheduler from host events)."""

    id: str
    app_id: str
    release_id: str
    type: str  # process type; "" for one-off jobs
    host_id: str | None = None
    state: JobState
    port: int | None = Field(default=None, ge=0, le=65535)
    exit_status: int | None = Field(default=None, ge=-(1 << 31), lt=1 << 31)
    error: str | None = None
    restarts: int = Field(default=0, ge=0, lt=1 << 31)
    created_at: datetime
    updated_at: datetime


TerminalSize = tuple[Annotated[int, Field(ge=1, le=10_000)], Annotated[int, Field(ge=1, le=10_000)]]


class JobRun(Wire):
    """`encom run`: a one-off job of the current release running `args` (joined as a shell command line)."""

    args: list[str] = Field(  # the schema says what `oneoff.run` checks: a command comes first
        max_length=1000, json_schema_extra={"minItems": 1, "prefixItems": [{"type": "string", "minLength": 1}]}
    )
    attach: bool = False  # the job's stdin is kept for an attacher (GET /apps/{app}/jobs/{job}/attach)
    tty: bool = False  # with attach: run the command on a pseudo-terminal
    size: TerminalSize | None = None  # with tty: the initial (rows, cols)


class RouteCreate(Wire):
    type: Literal["http", "tcp"] = "http"
    domain: str | None = None  # http only
    path: str = "/"  # http only
    port: int | None = None  # tcp only; allocated from the TCP range when omitted
    service: str | None = None  # defaults to "<app>-web"
    sticky: bool = False  # http only: pin a client to a backend by cookie
    certificate: str | None = None  # http only: PEM chain served by SNI for the domain (with `key`)
    key: str | None = None  # PEM private key of `certificate`


class RouteUpdate(Wire):
    """`route update`: the fields given change; domain, path, port and type never do."""

    service: str | None = None
    sticky: bool | None = None
    certificate: str | None = None  # with `key`; both "" remove the route's own certificate
    key: str | None = None


class Route(Wire):
    id: str
    app_id: str
    type: Literal["http", "tcp"]
    domain: str | None = None
    path: str = "/"
    port: int | None = None
    service: str
    sticky: bool = False
    certificate: str | None = None  # the route's own TLS certificate (PEM chain), chosen by SNI
    key: str | None = None  # its private key (the API is the cluster's admin API; never logged)
    redirect_https: bool = False  # from the app's meta `redirect_https=true`: plain HTTP gets a 301 to https
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.type}/{self.id}"


EventType = Literal[
    "app",
    "app_deletion",
    "release",
    "app_release",
    "artifact",
    "formation",
    "deployment",
    "job",
    "route",
    "route_deletion",
    "key",
    "key_deletion",
    "drain",
    "drain_deletion",
]


class Event(Wire):
    id: int  # monotonic; SSE id, resumable with Last-Event-ID
    app_id: str | None
    object_type: EventType
    object_id: str
    data: dict[str, Any]
    created_at: datetime


# ---------------------------------------------------------------- logs


class LogLine(Wire):
    timestamp: datetime
    app_id: str
    job_id: str
    process_type: str  # "" for one-off jobs
    dyno: str = ""  # "web.1"
    source: Literal["app", "router", "encom"] = "app"
    stream: Literal["stdout", "stderr"] = "stdout"
    msg: str

    def format(self) -> str:
        """`2026-11-24T19:00:00.123456Z app[web.1]: message`."""
        return f"{self.time_text} {self.source}[{self.process_name}]: {self.msg}"

    @property
    def time_text(self) -> str:
        """RFC 3339 in UTC with microseconds: `2026-11-24T19:00:00.123456Z`."""
        return self.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @property
    def process_name(self) -> str:
        """What `encom log` shows in brackets: the dyno (`web.1`), else the process type, else `run`."""
        return self.dyno or self.process_type or "run"


class RouterLogEntry(Wire):
    """An access line the router adds to the log of the job that served the request."""

    timestamp: datetime
    msg: str = Field(max_length=10_000)


class RouterLog(Wire):
    lines: list[RouterLogEntry] = Field(max_length=1000)


# ---------------------------------------------------------------- discoverd


class InstanceRegistration(Wire):
    addr: str  # "host:port"
    proto: Literal["tcp", "http"] = "tcp"
    meta: dict[str, str] = Field(default_factory=dict)


class Instance(InstanceRegistration):
    id: str
    service: str
    index: int  # registration order; the leader is the lowest index (oldest)
    created_at: datetime


ServiceEventKind = Literal["current", "up", "update", "down", "leader"]


class ServiceEvent(Wire):
    kind: ServiceEventKind
    service: str
    instance: Instance | None = None  # None only for "current"


class ServiceMeta(Wire):
    data: dict[str, Any]
    index: int  # compare-and-swap: a write must carry the index it read (0 = create)


# ---------------------------------------------------------------- host


class HostJobSpec(Wire):
    """What the scheduler (or gitreceive, for builds) asks a host to run."""

    id: str
    app_id: str
    app_name: str
    release_id: str
    process_type: str = ""  # "" for one-off and build jobs
    dyno: str = ""  # "web.1"
    artifact_url: str | None = None  # blobstore path of the slug extracted to /app; None = empty /app
    cmd: str | None = None  # Procfile command, run through the slug runner (bash -c after .profile.d)
    args: list[str] | None = None  # exec'd as is when cmd is None
    env: dict[str, str] = Field(default_factory=dict)  # PORT is added by the host
    port: bool = False  # allocate a host port and pass it as PORT
    service: str | None = None  # register PORT in discoverd under this name once the check passes
    check: HealthCheck | None = None
    resources: Resources = Field(default_factory=Resources)
    builder: bool = False  # mount encom's build tooling read-only at /encom (build jobs only)
    stop_grace: float = 30.0
    stdin: bool = False  # keep the write end of the job's stdin for an attacher
    tty: bool = False  # run on a pseudo-terminal (the host keeps its master); implies stdin
    size: TerminalSize | None = None  # with tty: the initial (rows, cols)


HostJobState = Literal["starting", "up", "stopping", "down", "crashed", "failed"]


class HostJob(Wire):
    spec: HostJobSpec
    host_id: str
    state: HostJobState
    port: int | None = None
    pid: int | None = None
    exit_status: int | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def id(self) -> str:
        return self.spec.id


class HostJobEvent(Wire):
    host_id: str
    job: HostJob


class HostStatus(Wire):
    id: str
    url: str
    jobs: int


# ---------------------------------------------------------------- log drains


class DrainCreate(Wire):
    """`syslog+tcp://host:port`, `https://[user:pass@]host[:port]/path` or `http://…`."""

    url: str = Field(max_length=2048)


class Drain(Wire):
    id: str
    app_id: str
    url: str  # as given, credentials included (the API is the cluster's admin API); never logged
    token: str  # "d.<uuid>": sent as Logplex-Drain-Token (https) so the receiver can tell drains apart
    created_at: datetime
