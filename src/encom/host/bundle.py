"""The OCI bundle of a job: a near-empty read-only rootfs over the host stack (`/usr`, `/etc`), the slug at /app."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encom.api.types import HostJobSpec
from encom.host.disk import MOUNT as DISK_DIR
from encom.host.seccomp import default_profile

# Sources every /app/.profile.d/*.sh, then runs the Procfile command ($1) through bash, as Heroku does. The command
# runs as a child rather than exec'd: PID 1 of a PID namespace ignores signals it has no handler for, so SIGTERM
# would never reach an exec'd app. This bash forwards SIGTERM/SIGINT, reaps orphans and exits with its status.
# Without job control bash gives a background command /dev/null as stdin and ignores SIGINT/SIGQUIT in it (which
# a shell then cannot even trap): `<&0` keeps the job's stdin (an attached one's pipe or terminal) and `env
# --default-signal` restores the two signals, so an interrupt reaches the command.
RUNNER = """\
__encom_cmd="$1"
__encom_pid=
__encom_sig=
# Traps first: a stop that comes while .profile.d runs (or before the command has a pid) is kept and passed on.
__encom_forward() { __encom_sig=$1; [ -n "$__encom_pid" ] && kill -"$1" "$__encom_pid" 2>/dev/null; }
trap '__encom_forward TERM' TERM
trap '__encom_forward INT' INT
for __encom_f in /app/.profile.d/*.sh; do [ -r "$__encom_f" ] && . "$__encom_f"; done
unset __encom_f
env --default-signal=INT,QUIT bash -c "$__encom_cmd" <&0 &
__encom_pid=$!
[ -n "$__encom_sig" ] && kill -"$__encom_sig" "$__encom_pid" 2>/dev/null
while :; do
  wait "$__encom_pid"
  __encom_status=$?
  kill -0 "$__encom_pid" 2>/dev/null && continue
  # A trap interrupts `wait` (status 128+signal) even when the command exits right after: ask again for the
  # real status (127 when the first wait already collected it).
  wait "$__encom_pid" 2>/dev/null
  __encom_again=$?
  [ "$__encom_again" -ne 127 ] && __encom_status=$__encom_again
  break
done
exit "$__encom_status"
"""
DEFAULT_PATH = ":".join(
    (
        "/app/.venv/bin",
        "/app/node_modules/.bin",
        "/app/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    )
)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ROOTFS_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
ROOTFS_DIRS = ("usr", "etc", "proc", "dev", "sys", "tmp", "app", "encom/build", "encom/bin", "encom/out")
# Jobs run as their app's own non-root uid and need no capability: web ports are high (jobs share the host's
# network, so NET_BIND_SERVICE would let an app take the router's :80), files under /app and /tmp are the uid's own.
# The bounding set is empty too, so nothing (setuid binaries included, with no_new_privs) can gain one back.
CAPABILITIES: list[str] = []
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class BundlePaths:
    """Where one job's files live on the host."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def disk(self) -> Path:
        """The job's own filesystem (see encom.host.disk), or a plain directory when it has none."""
        return self.dir / DISK_DIR

    @property
    def app(self) -> Path:
        return self.disk / "app"

    @property
    def tmp(self) -> Path:
        return self.disk / "tmp"

    @property
    def hosts(self) -> Path:
        return self.dir / "hosts"

    @property
    def resolv(self) -> Path:
        return self.dir / "resolv.conf"

    @property
    def pid_file(self) -> Path:
        return self.dir / "init.pid"


@dataclass
class BundleOptions:
    """What the bundle needs beyond the spec: decided by the host."""

    port: int | None = None
    uid: int = 0
    gid: int = 0
    build_dir: Path | None = None  # encom's build tooling, bound at /encom/build for builder jobs
    uv_binary: Path | None = None  # bound at /encom/bin/uv for builder jobs
    output_dir: Path | None = None  # bound writable at /encom/out for builder jobs (see encom.host.outputs)
    extra_env: dict[str, str] = field(default_factory=dict)


def hostname_for(job_id: str) -> str:
    """The container's hostname: the short job id, as a valid hostname."""
    name = re.sub(r"[^a-z0-9-]", "", job_id.lower()).strip("-")[:12].strip("-")
    return name or "job"


def nofile_limit(wanted: int) -> int:
    """Root cannot raise RLIMIT_NOFILE above the host's hard limit (no CAP_SYS_RESOURCE on these machines)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else max(1, min(wanted, hard))


def process_args(spec: HostJobSpec) -> list[str]:
    if spec.cmd is not None:
        return ["/bin/bash", "-c", RUNNER, "encom-runner", spec.cmd]
    if spec.args:
        return list(spec.args)
    raise ValueError("a job needs cmd or args")


def process_env(spec: HostJobSpec, opts: BundleOptions) -> list[str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/app",
        "SSL_CERT_FILE": CA_BUNDLE,
        "NODE_EXTRA_CA_CERTS": CA_BUNDLE,
        "npm_config_cafile": CA_BUNDLE,
        **opts.extra_env,
        **spec.env,
    }
    env["HOME"] = "/app"
    if opts.port is not None:
        env["PORT"] = str(opts.port)
    return [f"{k}={v}" for k, v in env.items()]


def _bind(source: Path | str, dest: str, readonly: bool = True) -> dict[str, Any]:
    options = ["rbind", "nosuid", "nodev"] + (["ro"] if readonly else ["rw"])
    return {"destination": dest, "type": "bind", "source": str(source), "options": options}


def mounts(spec: HostJobSpec, paths: BundlePaths, opts: BundleOptions) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        # runc mounts the job's own cgroups here (read-only): memory.limit_in_bytes shows the job's limit.
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
        _bind("/usr", "/usr"),
        _bind("/etc", "/etc"),
        _bind(paths.hosts, "/etc/hosts"),
        _bind(paths.resolv, "/etc/resolv.conf"),
        # /app and /tmp: two directories of the job's one size-limited filesystem
        _bind(paths.app, "/app", readonly=False),
        _bind(paths.tmp, "/tmp", readonly=False),
    ]
    if spec.builder and opts.build_dir is not None:
        result.append(_bind(opts.build_dir, "/encom/build"))
    if spec.builder and opts.uv_binary is not None:
        result.append(_bind(opts.uv_binary, "/encom/bin/uv"))
    if spec.builder and opts.output_dir is not None:
        result.append(_bind(opts.output_dir, "/encom/out", readonly=False))
    return result


def linux_resources(spec: HostJobSpec) -> dict[str, Any]:
    res = spec.resources
    return {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": res.memory},
        "cpu": {"shares": max(2, res.cpu * 1024 // 1000)},
        "pids": {"limit": res.max_procs},
    }


def build_config(spec: HostJobSpec, paths: BundlePaths, opts: BundleOptions) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of a job."""
    nofile = nofile_limit(spec.resources.max_fd)
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": {"uid": opts.uid, "gid": opts.gid},
            "args": process_args(spec),
            "env": process_env(spec, opts),
            "cwd": "/app",
            "capabilities": {
                k: list(CAPABILITIES) for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(paths.rootfs), "readonly": True},
        "hostname": hostname_for(spec.id),
        "mounts": mounts(spec, paths, opts),
        "linux": {
            "cgroupsPath": f"/encom/{spec.id}",
            "resources": linux_resources(spec),
            "namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": default_profile(),
        },
    }
    if spec.tty and spec.size is not None:
        config["process"]["consoleSize"] = {"height": spec.size[0], "width": spec.size[1]}
    return config


def hosts_file(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost {hostname}\n"
        f"::1\tlocalhost ip6-localhost ip6-loopback {hostname}\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )


def prepare_rootfs(rootfs: Path) -> None:
    """Mount points and the merged-/usr symlinks; runc makes the rootfs read-only afterwards."""
    # encomd's umask is 077: the job's uid must still traverse its `/` and the mount points below it.
    rootfs.mkdir(mode=0o755, exist_ok=True)
    os.chmod(rootfs, 0o755)
    for d in ROOTFS_DIRS:
        for part in reversed((rootfs / d).relative_to(rootfs).parents[:-1]):
            (rootfs / part).mkdir(exist_ok=True)
            os.chmod(rootfs / part, 0o755)
        (rootfs / d).mkdir(exist_ok=True)
        os.chmod(rootfs / d, 0o755)
    # runc (1.1) gives a tmpfs the mode of the directory it is mounted on, whatever its mode= option says.
    os.chmod(rootfs / "tmp", 0o1777)
    (rootfs / "encom/bin/uv").touch()
    for name, target in ROOTFS_LINKS.items():
        link = rootfs / name
        if not link.is_symlink():
            link.symlink_to(target)


def write_bundle(spec: HostJobSpec, paths: BundlePaths, opts: BundleOptions) -> None:
    """Write config.json, the rootfs skeleton, /etc/hosts and /etc/resolv.conf of a job (blocking I/O)."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    paths.app.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(exist_ok=True)
    # The job's /app and /tmp are its uid's alone (an empty /app too: builds write there); the bundle is root's
    # alone, so no other app's uid could reach this job's files even from a path on the host.
    for path, mode in ((paths.app, 0o700), (paths.tmp, 0o1777)):
        os.chown(path, opts.uid, opts.gid)
        os.chmod(path, mode)
    prepare_rootfs(paths.rootfs)
    paths.hosts.write_text(hosts_file(hostname_for(spec.id)))
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        shutil.copyfile(resolv, paths.resolv)
    else:
        paths.resolv.write_text("")
    for readable in (paths.hosts, paths.resolv):  # bound into the container, read by the job's uid
        os.chmod(readable, 0o644)
    tmp = paths.config.with_suffix(".tmp")
    tmp.write_text(json.dumps(build_config(spec, paths, opts), indent=2))
    tmp.replace(paths.config)
