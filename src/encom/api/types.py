"""Wire types: every JSON body that crosses a component boundary is one of these, used by both sides."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from encom.api.errors import ValidationError

APP_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # a host name label: <app>.<domain> is routed
APP_NAME_RULE = (
    "app name must start with a lowercase letter, end with a letter or digit and contain only lowercase letters, "
    "digits and dashes (at most 63 characters)"
)


# ---------------------------------------------------------------- input bounds
# Rules for what users send, checked where it enters (the controller's API) so that nothing out of bounds is
# stored. Each raises ValidationError (a 400) with a message naming the rule. Stored records are read without
# them, so data written before a rule existed still loads.

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_KEY = 255  # characters
MAX_ENV_VALUE = 32 << 10  # bytes (UTF-8)
MAX_RELEASE_ENV = 256 << 10  # bytes: a release's env and every process type's env together, keys included
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_PROCESS_TYPES = 50
MAX_COMMAND = 32 << 10  # bytes of a process type's command
MAX_RUN_COMMAND = 64 << 10  # bytes of `encom run`'s arguments joined
META_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_META_KEYS = 100
MAX_META_VALUE = 1024
SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]{0,127}$")  # an app name's alphabet; `<app>-<type>` fits
MAX_ROUTE_PATH = 2048
BLOB_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")  # the blobstore's, minus hidden names
MAX_ARTIFACT_URL = 1024
MAX_SHOWN = 64  # characters of a refused value quoted in an error


def shown(value: str) -> str:
    """A refused value as an error quotes it: escaped (newlines, NUL) and cut short."""
    text = value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def _utf8_size(text: str) -> int:
    return len(text.encode(errors="surrogatepass"))


def check_env(env: Mapping[str, str], where: str = "env") -> int:
    """Every key a shell variable name, every value at most 32 KiB without NUL; returns the env's size."""
    total = 0
    for key, value in env.items():
        if len(key) > MAX_ENV_KEY:
            raise ValidationError(f"{where}: env key {shown(key)} is longer than {MAX_ENV_KEY} characters")
        if not ENV_KEY_RE.fullmatch(key):
            raise ValidationError(
                f"{where}: invalid env key {shown(key)}: keys must match ^[A-Za-z_][A-Za-z0-9_]*$ "
                "(letters, digits and underscores, not starting with a digit)"
            )
        size = _utf8_size(value)
        if size > MAX_ENV_VALUE:
            raise ValidationError(
                f"{where}: the value of {key} is {size} bytes; an env value is at most {MAX_ENV_VALUE} bytes (32 KiB)"
            )
        if "\0" in value:
            raise ValidationError(f"{where}: the value of {key} contains a NUL character")
        total += len(key) + size
    return total


def check_release_env(env: Mapping[str, str], process_envs: Mapping[str, Mapping[str, str]]) -> None:
    """The release's env and each process type's env checked, and at most 256 KiB all together."""
    total = check_env(env)
    for name, process_env in process_envs.items():
        total += check_env(process_env, f"{name} env")
    if total > MAX_RELEASE_ENV:
        raise ValidationError(
            f"the release's env is {total} bytes in all; a release's env and its process types' env together "
            f"are at most {MAX_RELEASE_ENV} bytes (256 KiB)"
        )


def check_command(command: str, where: str, limit: int = MAX_COMMAND) -> None:
    size = _utf8_size(command)
    if size > limit:
        raise ValidationError(f"{where}: the command is {size} bytes; at most {limit} bytes")
    if "\0" in command:
        raise ValidationError(f"{where}: the command contains a NUL character")


def check_process_types(names: list[str]) -> None:
    if len(names) > MAX_PROCESS_TYPES:
        raise ValidationError(f"a release has at most {MAX_PROCESS_TYPES} process types, not {len(names)}")
    bad = [name for name in names if not PROCESS_TYPE_RE.fullmatch(name)]
    if bad:
        listed = ", ".join(shown(name) for name in bad[:5])
        raise ValidationError(f"invalid process type names: {listed} (use ^[a-z][a-z0-9-]*$, at most 63 characters)")


def check_meta(meta: Mapping[str, str | None], what: str = "meta") -> None:
    """Keys of letters, digits, `_`, `.`, `-` (at most 64), values at most 1 KiB, at most 100 keys."""
    if len(meta) > MAX_META_KEYS:
        raise ValidationError(f"{what}: at most {MAX_META_KEYS} keys, not {len(meta)}")
    for key, value in meta.items():
        if not META_KEY_RE.fullmatch(key):
            raise ValidationError(
                f'{what}: invalid key {shown(key)}: letters, digits, "_", "." and "-", at most 64 characters'
            )
        if value is not None and len(value) > MAX_META_VALUE:
            raise ValidationError(f"{what}: the value of {shown(key)} is longer than {MAX_META_VALUE} characters")


def check_process_counts(processes: Mapping[str, int], limit: int) -> None:
    """No count below zero or above the cluster's `max_processes_per_type`."""
    negative = [f"{name}={count}" for name, count in processes.items() if count < 0]
    if negative:
        raise ValidationError("process counts cannot be negative: " + ", ".join(negative[:5]))
    for name, count in processes.items():
        if count > limit:
            number = str(count) if count < 10**12 else f"{str(count)[:6]}... ({len(str(count))} digits)"
            raise ValidationError(
                f"{shown(name)}={number} is above the limit of {limit} processes per type "
                "(the cluster setting max_processes_per_type)"
            )


def check_service(service: str) -> str:
    """A discoverd service a route sends to: an app name's alphabet, at most 128 characters."""
    if not SERVICE_RE.fullmatch(service):
        raise ValidationError(
            f"invalid route service {shown(service)}: like an app name, it must start with a lowercase letter "
            "and contain only lowercase letters, digits and dashes (at most 128 characters)"
        )
    return service


def check_artifact_url(url: str) -> str:
    """An artifact is a blobstore path (`/slugs/<app>/<id>.tgz`): what hosts fetch slugs from."""
    rule = "an artifact URL is a blobstore path such as /slugs/<app>/<id>.tgz"
    if not url:
        raise ValidationError(f"the artifact URL is empty: {rule}")
    if len(url) > MAX_ARTIFACT_URL:
        raise ValidationError(f"the artifact URL is longer than {MAX_ARTIFACT_URL} characters")
    segments = url.split("/")
    if segments[0] != "" or not all(BLOB_SEGMENT_RE.fullmatch(s) for s in segments[1:]):
        raise ValidationError(
            f"invalid artifact URL {shown(url)}: {rule} (segments of A-Z a-z 0-9 . _ -, none hidden or empty)"
        )
    return url


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


DEFAULT_MAX_PROCS = 512
DEFAULT_TEMP_DISK = 1 << 30
# A build's own limits: package managers run many processes and unpack large trees, and /app (source, slug
# contents) and /tmp (build cache, env) share its disk.
BUILD_MEMORY = 2 << 30
BUILD_MAX_PROCS = 1024
BUILD_TEMP_DISK = 4 << 30


# A formation's counts per process type: JSON integers only (lax validation would take `false` as 0).
ProcessCounts = dict[str, StrictInt]


def _unlimited_is_default(v: object) -> object:
    return DEFAULT_MAX_PROCS if v is None else v


# null (what releases stored when max_procs could be unlimited hold) means the default, for API input too.
MaxProcs = Annotated[
    int,
    BeforeValidator(_unlimited_is_default),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "null"}], "default": DEFAULT_MAX_PROCS}),
]


class Resources(Wire):
    """Per-process limits. Units: bytes for memory/temp_disk, milli-CPU for cpu (1000 = one core).
    `max_procs` is the job's pids cgroup limit; `temp_disk` the size of the one filesystem holding its /app and
    /tmp. Releases stored when max_procs could be unlimited (null) read as the default."""

    memory: int = 1 << 30
    cpu: int = 1000
    max_fd: int = 10000
    max_procs: MaxProcs = DEFAULT_MAX_PROCS
    temp_disk: int = DEFAULT_TEMP_DISK

    @classmethod
    def for_build(cls) -> Resources:
        """A build job's limits (cpu and max_fd as any job's)."""
        return cls(memory=BUILD_MEMORY, max_procs=BUILD_MAX_PROCS, temp_disk=BUILD_TEMP_DISK)


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
        if not APP_NAME_RE.fullmatch(v):
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
    key: str = Field(max_length=16 << 10)  # an OpenSSH public key line: "<type> <base64> [comment]"


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
    processes: ProcessCounts


class Formation(Wire):
    app_id: str
    release_id: str
    processes: ProcessCounts
    updated_at: datetime


class ExpandedFormation(Wire):
    """What the scheduler needs to run a formation: the app, the full release and its artifact."""

    app: App
    release: Release
    artifact: Artifact | None
    processes: ProcessCounts
    updated_at: datetime


class DeployRequest(Wire):
    release_id: str
    # Counts for the new release; when omitted, the current formation's counts are carried over.
    processes: ProcessCounts | None = None


DeploymentStatus = Literal["pending", "running", "complete", "failed"]


class Deployment(Wire):
    id: str
    app_id: str
    old_release_id: str | None
    new_release_id: str
    strategy: str
    status: DeploymentStatus
    processes: ProcessCounts  # the new release's counts
    old_processes: ProcessCounts = Field(default_factory=dict)  # the old release's, restored on failure
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
    # whose limits (memory, cpu, max_fd, max_procs, temp_disk) the job gets: the release's `web` type by default
    type: str | None = Field(default=None, max_length=63)

    @field_validator("args")
    @classmethod
    def _bounded_args(cls, v: list[str]) -> list[str]:
        size = sum(_utf8_size(arg) + 1 for arg in v)
        if size > MAX_RUN_COMMAND:
            raise ValueError(f"the command is {size} bytes; at most {MAX_RUN_COMMAND} bytes")
        if any("\0" in arg for arg in v):
            raise ValueError("the command contains a NUL character")
        return v


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
    # whose limits (memory, cpu, max_fd, max_procs, temp_disk) the job gets: the release's `web` type by default
    type: str | None = Field(default=None, max_length=63)
    # A build's outputs (output name -> blob path), uploaded by the host from the build's /encom/out once the build
    # has ended: builds get no write credential. Names and paths: see BUILD_OUTPUT_PATHS.
    outputs: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_outputs(self) -> HostJobSpec:
        if self.outputs and not self.builder:
            raise ValueError("only build jobs have outputs")
        for name, path in self.outputs.items():
            if name not in BUILD_OUTPUT_PATHS:
                raise ValueError(f"unknown build output {name!r} (known: {', '.join(BUILD_OUTPUT_PATHS)})")
            if not BUILD_OUTPUT_PATHS[name](self.app_id).fullmatch(path):
                raise ValueError(f"build output {name!r} must go to the app's own {name} path, not {path!r}")
        return self


def _own_path(template: str) -> Callable[[str], re.Pattern[str]]:
    return lambda app_id: re.compile(template.format(app=re.escape(app_id), id=r"[A-Za-z0-9_-]{1,64}"))


# The blob paths a build's outputs may be stored at: only under the app's own prefixes.
BUILD_OUTPUT_PATHS: dict[str, Callable[[str], re.Pattern[str]]] = {
    "slug": _own_path("slugs/{app}/{id}\\.tgz"),
    "cache": _own_path("caches/{app}\\.tar"),
    "result": _own_path("builds/{app}/{id}\\.json"),
}


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
