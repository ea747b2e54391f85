"""Finding 6 (secrets readable by other users) and finding 9 (delete leaves data behind).

The state directory is root's alone: nobody (uid 65534) and every app's uid can reach nothing under it, and from a job
nothing of another app is reachable. `encom delete` removes everything the app had: afterwards no path under the state
directory names it, no file holds its env, its source, its logs or its drain's password, and its uid is never given
to another app.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import Cluster, User, curl, wait_for
from tests.security.conftest import Victim, attacker_repo, victim_serves

NOBODY = 65534
JOB_READABLE = ("rootfs", "hosts", "resolv.conf", "disk")  # in a job's bundle: what its container reads, its own disk
DEBIAN_PYTHON = "/usr/bin/python3"

# Run as another uid: try to open every path (and list every directory); print those that worked.
PROBE = """
import json, os, sys
reachable = []
for path in json.load(sys.stdin):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        reachable.append(path)
    except OSError:
        pass
print(json.dumps(reachable))
"""


def every_path(root: Path) -> list[Path]:
    paths = [root]
    for directory, dirs, files in os.walk(root):
        paths += [Path(directory) / name for name in dirs + files]
    return paths


@contextlib.contextmanager
def traversable_ancestors(path: Path) -> Iterator[None]:
    """pytest's temp dirs are 0700: let other uids walk down to the state dir for the test, so only its own modes
    decide (as for /var/lib/encom)."""
    changed: list[tuple[Path, int]] = []
    for ancestor in path.parents:
        mode = stat.S_IMODE(ancestor.stat().st_mode)
        if not mode & 0o001:
            os.chmod(ancestor, mode | 0o001)
            changed.append((ancestor, mode))
    try:
        yield
    finally:
        for ancestor, mode in changed:
            os.chmod(ancestor, mode)


def reachable_as(uid: int, paths: list[Path]) -> list[str]:
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", DEBIAN_PYTHON, "-c", PROBE],
        input=json.dumps([str(p) for p in paths]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    found: list[str] = json.loads(proc.stdout)
    return found


def app_uids(cluster: Cluster) -> dict[str, int]:
    data = json.loads((cluster.state_dir / "host" / "uids.json").read_text())
    apps: dict[str, int] = data.get("apps", data)  # older versions kept the mapping alone
    return apps


def app_id(user: User, name: str) -> str:
    for line in user.encom("apps").out.splitlines()[1:]:
        fields = line.split()
        if len(fields) == 2 and fields[1] == name:
            return fields[0]
    raise AssertionError(f"app {name} not listed")


def open_modes(root: Path) -> list[str]:
    """Entries that give group or others any permission, but those inside a job's own 0700 bundle: what its container
    must read (the rootfs skeleton, /etc/hosts, /etc/resolv.conf) and its /app (its uid's, as the app made it)."""
    found = []
    for path in every_path(root):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
            continue
        parts = path.relative_to(root).parts
        in_bundle = parts[:2] == ("host", "jobs") and len(parts) > 3 and parts[3] in JOB_READABLE
        if not in_bundle:
            found.append(f"{oct(stat.S_IMODE(st.st_mode))} {path}")
    return found


def test_the_state_dir_is_root_only(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, "snoop", {"Procfile": "web: exec python3 -m http.server $PORT\n"})
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    snoop_uid = app_uids(cluster)[app_id(user, "snoop")]
    state = cluster.state_dir
    victim_records = sorted((state / "host" / "jobs").glob("*/job.json"))
    assert victim_records
    paths = every_path(state)

    with victim_serves(cluster, victim, "reading the state dir as other uids"):
        assert open_modes(state) == []
        with traversable_ancestors(state):
            assert reachable_as(NOBODY, paths) == []
            assert reachable_as(snoop_uid, paths) == []
        # From a job: neither the state dir nor another app's record is there, and no other app's process is seen.
        script = f"cat {victim_records[0]}; ls {state}; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; echo probed"
        out = user.ok("encom", "run", "sh", "-c", script, cwd=repo).text
    assert "probed" in out
    assert out.count("No such file or directory") == 2, out
    assert '"env"' not in out and "gunicorn" not in out, out  # the victim runs gunicorn


def test_delete_removes_everything(cluster: Cluster, user: User, victim: Victim) -> None:
    name = f"doomed-{secrets.token_hex(4)}"
    secret = f"s3cr3t-{secrets.token_hex(12)}"
    marker = f"source-marker-{secrets.token_hex(12)}"
    drain_password = f"drainpw-{secrets.token_hex(12)}"
    repo = attacker_repo(
        user,
        name,
        {
            "Procfile": "web: echo token=$DOOMED_TOKEN; exec python3 -m http.server $PORT\n",
            "marker.txt": marker + "\n",
        },
    )
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    doomed_id = app_id(user, name)
    user.encom("env", "set", f"DOOMED_TOKEN={secret}", cwd=repo)
    user.encom("route", "add", "http", f"extra-{name}.example.test", cwd=repo)
    user.encom("drain", "add", f"https://user:{drain_password}@127.0.0.1:9/logs", cwd=repo)
    user.run("encom", "run", "sh", "-c", "cat marker.txt; echo $DOOMED_TOKEN; exit 3", cwd=repo)  # crashed
    user.run("encom", "run", "no-such-command-here", cwd=repo)  # failed (127)
    wait_for("the app to answer", lambda: curl(cluster.router_port, f"{name}.encom.localhost")[0] == 200)
    doomed_uid = app_uids(cluster)[doomed_id]
    state = cluster.state_dir
    names, contents = [name, doomed_id], [secret, marker, drain_password]
    before = leftovers(state, names, contents)
    assert any(secret in found for found in before) and any(marker in found for found in before), before

    with victim_serves(cluster, victim, "deleting another app"):
        user.encom("delete", "-y", "-a", name)
        try:
            wait_for("the app's data to go", lambda: not leftovers(state, names, contents), 90)
        except AssertionError:
            raise AssertionError(f"left behind: {leftovers(state, names, contents)}") from None
    assert curl(cluster.router_port, f"{name}.encom.localhost")[0] == 404

    # A new app never gets the deleted app's uid.
    heir = user.procfile_repo(f"heir-{secrets.token_hex(3)}", "web: exec python3 -m http.server $PORT\n", "heir")
    heir_name = heir.name
    user.encom("create", heir_name, cwd=heir)
    user.ok("git", "push", "encom", "master", cwd=heir, timeout=300)
    heir_uid = app_uids(cluster)[app_id(user, heir_name)]
    assert heir_uid > doomed_uid
    assert doomed_uid not in app_uids(cluster).values()


def leftovers(state: Path, names: list[str], contents: list[str]) -> list[str]:
    """Paths under `state` that contain one of `names`, and files whose bytes contain one of `contents`."""
    found = []
    needles = [c.encode() for c in contents]
    for path in every_path(state):
        if any(n in str(path.relative_to(state)) for n in names):
            found.append(f"path {path}")
            continue
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                found += [f"{needle.decode()} in {path}" for needle in needles if needle in data]
    return found
