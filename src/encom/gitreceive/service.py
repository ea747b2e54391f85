"""The gitreceive role: an SSH server that accepts `git push` into a bare repo per app.

Authentication is by public key only, against the controller's keys. The only command allowed is
`git-receive-pack '<app>.git'`. Each repo's `pre-receive` hook runs `encom.gitreceive.receiver`, which builds and
deploys the push; its output reaches the pusher live as `remote:` lines and its failure rejects the push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import asyncssh

from encom.api.aio import KeyedLocks, wait_for
from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.files import private_dir, write_private
from encom.api.role import RoleContext
from encom.api.settings import Settings
from encom.api.types import APP_NAME_RE, App
from encom.controller.client import ControllerClient

log = logging.getLogger(__name__)

HOST_KEY_FILE = "ssh_host_ed25519_key"
RECEIVER_MODULE = "encom.gitreceive.receiver"
CHUNK = 1 << 16
# asyncssh re-opens a channel's window whenever buffered data moves on to the reader, so a reader taking less
# than a window at a time lets the pusher send far more than git consumes (a 200 MB push was held almost whole
# in memory). Reading a whole window per read keeps the buffer at about one window.
RECEIVE_WINDOW = 256 << 10
STOP_GRACE = 10.0
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class PushRefused(Exception):
    """A push refused before git runs; the message goes to the pusher's terminal."""


def parse_command(command: str | None) -> str:
    """The app name of `git-receive-pack '<app>.git'` (leading `/` and quotes optional); anything else refused."""
    usage = "only git push is supported here: git push ssh://git@<host>:<port>/<app>.git master"
    if not command:
        raise PushRefused(f"interactive sessions are not supported; {usage}")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise PushRefused(f"invalid command ({exc}); {usage}") from None
    if len(words) != 2 or words[0] != "git-receive-pack":
        raise PushRefused(f"command not allowed: {command[:200]!r}; {usage}")
    path = words[1]
    name = path.lstrip("/").removesuffix(".git")
    if not APP_NAME_RE.fullmatch(name):
        raise PushRefused(f"invalid repository {path[:200]!r}: expected /<app>.git with a valid app name")
    return name


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's ed25519 host key, generated on first start and kept (clients remember it)."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private(path, key.export_private_key())
    write_private(path.with_suffix(".pub"), key.export_public_key())
    return key


def hook_script(python: str) -> str:
    # -P: do not put the repo (the hook's cwd) on sys.path.
    return f"#!/bin/sh\nexec {shlex.quote(python)} -P -m {RECEIVER_MODULE}\n"


class Repos:
    """Bare repositories, one per app id, each with the receiver as its pre-receive hook."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.locks = KeyedLocks()  # per app: one repository set-up at a time

    async def prepare(self, app_id: str) -> Path:
        if not SAFE_ID.match(app_id):
            raise PushRefused(f"unexpected app id {app_id!r}")
        path = self.root / f"{app_id}.git"
        async with self.locks.hold(app_id):
            if not (path / "HEAD").exists():
                await self._init(path)
            self._write_hook(path)
        return path

    async def _init(self, path: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            "git", "init", "--quiet", "--bare", "--template=", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=git_env(),
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"git init {path}: {err.decode(errors='replace').strip()}")

    def app_ids(self) -> set[str]:
        return {p.name.removesuffix(".git") for p in self.root.glob("*.git")}

    async def remove(self, app_id: str) -> None:
        """A deleted app's repository goes (idempotent)."""
        if not SAFE_ID.match(app_id):
            return
        path = self.root / f"{app_id}.git"
        async with self.locks.hold(app_id):
            if path.exists():
                await asyncio.to_thread(shutil.rmtree, path, True)
                log.info("removed the repository of deleted app %s", app_id)

    def _write_hook(self, repo: Path) -> None:
        hooks = repo / "hooks"
        hooks.mkdir(exist_ok=True)
        script = hook_script(sys.executable)
        hook = hooks / "pre-receive"
        if hook.exists() and hook.read_text() == script:
            return
        tmp = hooks / "pre-receive.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        os.fchmod(fd, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(script)
        tmp.replace(hook)


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for git: no GIT_* from encomd's own environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    return {**env, **(extra or {})}


class GitSSHServer(asyncssh.SSHServer):
    """One per connection: public-key auth against the controller's keys; tracks the connection's pushes so
    that a client hanging up (Ctrl-C) stops its build."""

    def __init__(self, controller: ControllerClient, live: set[GitSSHServer]) -> None:
        self.controller = controller
        self.live = live
        self.accepted: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.live.add(self)
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        """Hang up and wait until this connection's pushes have stopped their builds."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.conn is not None:
            self.conn.close()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint: str = key.get_fingerprint("sha256")
        if fingerprint in self.accepted:  # asyncssh asks once without and once with the signature
            return True
        try:
            known = {k.fingerprint for k in await self.controller.list_keys()}
        except ApiError as exc:
            log.warning("cannot check key %s from %s: %s", fingerprint, self.peer, exc)
            return False
        if fingerprint in known:
            self.accepted.add(fingerprint)
            return True
        log.info("rejected key %s from %s", fingerprint, self.peer)
        return False


class GitReceive:
    def __init__(self, settings: Settings, controller: ControllerClient) -> None:
        self.settings = settings
        self.controller = controller
        self.repos = Repos(settings.dir("gitreceive") / "repos")
        private_dir(self.repos.root)

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        owner = process.channel.get_connection().get_owner()
        task = asyncio.current_task()
        if isinstance(owner, GitSSHServer) and task is not None:
            owner.tasks.add(task)
        status = 1
        try:
            status = await self._push(process)
        except PushRefused as exc:
            self._tell(process, f"encom: {exc}\n")
        except asyncio.CancelledError:
            log.info("push cancelled (client gone or shutting down)")
            raise
        except Exception:
            log.exception("push failed")
            self._tell(process, "encom: internal error in gitreceive; see the encomd log\n")
        finally:
            if isinstance(owner, GitSSHServer) and task is not None:
                owner.tasks.discard(task)
        with contextlib.suppress(Exception):
            process.exit(status)

    @staticmethod
    def _tell(process: asyncssh.SSHServerProcess[bytes], message: str) -> None:
        with contextlib.suppress(Exception):
            process.stderr.write(message.encode())

    async def _push(self, process: asyncssh.SSHServerProcess[bytes]) -> int:
        name = parse_command(process.command)
        app = await self._app(name)
        repo = await self.repos.prepare(app.id)
        log.info("push to %s (%s)", app.name, app.id)
        return await self._receive_pack(process, repo, app)

    async def _app(self, name: str) -> App:
        try:
            return await self.controller.get_app(name)
        except ApiError as exc:
            if exc.status == 404:
                raise PushRefused(f'app "{name}" does not exist; create it with "encom create {name}"') from None
            raise PushRefused(f"cannot reach the controller: {exc}") from None

    def _push_limit(self) -> int:
        """The cluster's max_push_bytes, read at each push (a change needs no restart)."""
        try:
            return Settings.load(self.settings.data_dir).max_push_bytes
        except (OSError, ValueError) as exc:
            log.warning("cannot read the push limit (%s); using %d bytes", exc, self.settings.max_push_bytes)
            return self.settings.max_push_bytes

    async def _receive_pack(self, process: asyncssh.SSHServerProcess[bytes], repo: Path, app: App) -> int:
        limit = self._push_limit()
        env = git_env(
            {
                "ENCOM_DATA_DIR": str(self.settings.data_dir.resolve()),
                "ENCOM_APP_ID": app.id,
                "ENCOM_APP_NAME": app.name,
                "PYTHONUNBUFFERED": "1",
                # git's own bound on the pack, behind the byte count of the channel below.
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "receive.maxInputSize",
                "GIT_CONFIG_VALUE_0": str(limit),
            }
        )
        proc = await asyncio.create_subprocess_exec(
            "git-receive-pack", str(repo),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=str(repo), start_new_session=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(process.stdin, proc.stdin, limit))
        feeder.add_done_callback(lambda done: self._on_fed(done, process, proc, app, limit))
        try:
            # The client needs all of receive-pack's output (the report-status comes last) before the exit.
            await asyncio.gather(_copy(proc.stdout, process.stdout), _copy(proc.stderr, process.stderr))
            status = await proc.wait()
            return 1 if _too_large(feeder) else status
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            if proc.returncode is None:
                await _stop_group(proc)

    def _on_fed(
        self,
        feeder: asyncio.Task[bool],
        process: asyncssh.SSHServerProcess[bytes],
        proc: asyncio.subprocess.Process,
        app: App,
        limit: int,
    ) -> None:
        """A push over the limit: the pusher is told why and receive-pack stops (SIGTERM: git removes its
        temporary pack and quarantine; nothing else was stored yet)."""
        if not _too_large(feeder):
            return
        log.warning("push to %s refused: over the limit of %d bytes", app.name, limit)
        self._tell(
            process,
            f"encom: push refused: it is larger than {format_bytes(limit)} ({limit} bytes), the cluster's limit "
            "on a push (setting max_push_bytes)\n",
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def _too_large(feeder: asyncio.Task[bool]) -> bool:
    return feeder.done() and not feeder.cancelled() and feeder.exception() is None and not feeder.result()


async def _feed(src: asyncssh.SSHReader[bytes], dst: asyncio.StreamWriter, limit: int) -> bool:
    """Copy the pusher's bytes to receive-pack, chunk by chunk; False (and stop) once they pass `limit`."""
    received = 0
    try:
        while chunk := await src.read(RECEIVE_WINDOW):
            received += len(chunk)
            if received > limit:
                return False
            dst.write(chunk)
            await dst.drain()
    except (ConnectionError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()
    return True


async def _copy(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
    client_gone = False
    while chunk := await src.read(CHUNK):
        if client_gone:
            continue  # keep draining so the child never blocks on a full pipe
        try:
            dst.write(chunk)
            await dst.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            client_gone = True


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM receive-pack and its hook (the receiver stops its build job), SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await wait_for(asyncio.shield(proc.wait()), STOP_GRACE)
            return
        except TimeoutError:
            continue


async def remove_deleted_repos(controller: ControllerClient, repos: Repos) -> None:
    """Follow the controller's app deletions and remove their repositories; at start (and after a lost stream),
    first remove the repositories of apps that no longer exist (deleted while gitreceive was not following)."""
    delay = 1.0
    while True:
        try:
            last = await controller.last_event_id()
            present = repos.app_ids()  # before listing the apps: a repository made after this is an app's that exists
            live = {app.id for app in await controller.list_apps()}
            for app_id in present - live:
                await repos.remove(app_id)
            async for event in controller.events(object_types=["app_deletion"], last_event_id=last):
                await repos.remove(event.app_id or event.object_id)
                delay = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("following app deletions: %s; again in %.0fs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    host_key = ensure_host_key(settings.dir("gitreceive") / HOST_KEY_FILE)
    controller = ControllerClient(
        settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path)
    )
    receive = GitReceive(settings, controller)
    live: set[GitSSHServer] = set()
    server = await asyncssh.create_server(
        lambda: GitSSHServer(controller, live),
        settings.bind,
        settings.ports.gitreceive,
        server_host_keys=[host_key],
        process_factory=receive.handle,
        encoding=None,
        window=RECEIVE_WINDOW,
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
    )
    log.info("gitreceive listening on %s:%d", settings.bind, settings.ports.gitreceive)
    cleaner = asyncio.create_task(remove_deleted_repos(controller, receive.repos), name="gitreceive-deletions")
    ctx.ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        cleaner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleaner
        server.close()
        await asyncio.gather(*(conn.close() for conn in list(live)), return_exceptions=True)
        await server.wait_closed()
        await controller.aclose()
