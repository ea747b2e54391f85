"""The OCI spec a job gets."""

from __future__ import annotations

import errno
import resource
from pathlib import Path
from typing import Any

from encom.api.types import HostJobSpec, Resources
from encom.host.bundle import RUNNER, BundleOptions, BundlePaths, build_config, hostname_for, nofile_limit
from encom.host.seccomp import default_profile


def make_spec(**changes: Any) -> HostJobSpec:
    base: dict[str, Any] = {"id": "0123456789abcdef", "app_id": "a", "app_name": "app", "release_id": "r"}
    return HostJobSpec.model_validate(base | {"cmd": "python app.py"} | changes)


def config(spec: HostJobSpec, **opts: Any) -> Any:
    return build_config(spec, BundlePaths(Path("/jobs/x")), BundleOptions(**opts))


def env_of(cfg: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in cfg["process"]["env"])


def mount_at(cfg: dict[str, Any], dest: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in cfg["mounts"] if m["destination"] == dest]
    assert len(found) == 1, found
    return found[0]


def test_procfile_command_runs_through_the_runner() -> None:
    cfg = config(make_spec())
    assert cfg["process"]["args"] == ["/bin/bash", "-c", RUNNER, "encom-runner", "python app.py"]
    assert cfg["process"]["cwd"] == "/app"
    assert "/app/.profile.d/*.sh" in RUNNER


def test_args_are_exec_as_is() -> None:
    cfg = config(make_spec(cmd=None, args=["/usr/bin/env"]))
    assert cfg["process"]["args"] == ["/usr/bin/env"]


def test_env_has_port_home_path_and_ca_bundle() -> None:
    env = env_of(config(make_spec(env={"FOO": "bar", "HOME": "/root"}), port=55001))
    assert env["PORT"] == "55001"
    assert env["HOME"] == "/app"
    assert env["FOO"] == "bar"
    assert env["PATH"].startswith("/app/.venv/bin:")
    assert env["SSL_CERT_FILE"] == env["NODE_EXTRA_CA_CERTS"] == env["npm_config_cafile"]
    assert "PORT" not in env_of(config(make_spec()))


def test_readonly_root_over_the_host_stack() -> None:
    cfg = config(make_spec())
    assert cfg["root"] == {"path": "/jobs/x/rootfs", "readonly": True}
    for dest in ("/usr", "/etc", "/etc/hosts", "/etc/resolv.conf"):
        assert "ro" in mount_at(cfg, dest)["options"], dest
    assert mount_at(cfg, "/etc/hosts")["source"] == "/jobs/x/hosts"
    assert mount_at(cfg, "/app") == {
        "destination": "/app",
        "type": "bind",
        "source": "/jobs/x/disk/app",
        "options": ["rbind", "nosuid", "nodev", "rw"],
    }
    # /app and /tmp are two directories of the job's one disk (encom.host.disk), never tmpfs (memory)
    assert mount_at(cfg, "/tmp")["source"] == "/jobs/x/disk/tmp"
    assert "rw" in mount_at(cfg, "/tmp")["options"]
    assert mount_at(cfg, "/sys")["options"][-1] == "ro"


def test_no_network_namespace_and_no_new_privileges() -> None:
    cfg = config(make_spec())
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "mount", "uts", "ipc"}
    assert cfg["process"]["noNewPrivileges"] is True
    assert "CAP_NET_BIND_SERVICE" not in cfg["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]
    assert cfg["hostname"] == "0123456789ab"
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0}
    assert config(make_spec(), uid=1000, gid=1000)["process"]["user"] == {"uid": 1000, "gid": 1000}


def test_limits() -> None:
    spec = make_spec(resources=Resources(memory=256 << 20, cpu=500, max_fd=10**6, max_procs=64))
    cfg = config(spec)
    res = cfg["linux"]["resources"]
    assert res["memory"] == {"limit": 256 << 20}
    assert res["cpu"] == {"shares": 512}
    assert res["pids"] == {"limit": 64}
    assert cfg["linux"]["cgroupsPath"] == "/encom/0123456789abcdef"
    (nofile,) = cfg["process"]["rlimits"]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert nofile["type"] == "RLIMIT_NOFILE"
    assert nofile["hard"] == nofile["soft"] == (10**6 if hard == resource.RLIM_INFINITY else min(10**6, hard))
    assert config(make_spec())["linux"]["resources"]["pids"] == {"limit": 512}
    assert nofile_limit(100) == 100


def test_builder_gets_tooling() -> None:
    build = Path("/src/encom/build")
    uv = Path("/opt/uv")
    cfg = config(make_spec(builder=True), build_dir=build, uv_binary=uv)
    assert mount_at(cfg, "/encom/build")["source"] == str(build)
    assert mount_at(cfg, "/encom/bin/uv")["source"] == str(uv)
    assert "ro" in mount_at(cfg, "/encom/build")["options"]
    plain = config(make_spec(), build_dir=build, uv_binary=uv)
    assert not [m for m in plain["mounts"] if m["destination"].startswith("/encom")]


def test_hostnames_are_valid() -> None:
    assert hostname_for("Web.1_ABC-def") == "web1abc-def"
    assert hostname_for("---") == "job"


def test_every_job_has_the_default_seccomp_profile() -> None:
    for spec in (make_spec(), make_spec(builder=True), make_spec(tty=True, stdin=True)):
        profile = config(spec)["linux"]["seccomp"]
        assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
        assert profile["defaultErrnoRet"] == errno.EPERM
        assert profile == default_profile()


def test_seccomp_profile_allows_what_programs_need_and_nothing_that_escapes() -> None:
    profile = default_profile("x86_64")
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    allowed = {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }
    assert {"read", "write", "execve", "fork", "socket", "epoll_wait", "statx", "faccessat2", "arch_prctl"} <= allowed
    refused = {
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "clock_settime",
        "settimeofday",
        "adjtimex",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "reboot",
        "swapon",
        "acct",
        "quotactl",
        "syslog",
        "chroot",
        "sethostname",
        "ioperm",
        "iopl",
        "fsopen",
        "move_mount",
        "clone",
        "clone3",
    }
    assert not refused & allowed
    (clone,) = [rule for rule in profile["syscalls"] if rule["names"] == ["clone"]]
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = [rule for rule in profile["syscalls"] if rule["names"] == ["clone3"]]
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", errno.ENOSYS)
