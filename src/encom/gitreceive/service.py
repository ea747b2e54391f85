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
import signal
import sys
from pathlib import Path
from typing import Any

import asyncssh

from encom.api.aio import KeyedLocks, wait_for
from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.files import write_private
from encom.api.role import RoleContext
from encom.api.settings import Settings
from encom.api.types import APP_NAME_RE, App
from encom.controller.client import ControllerClient

log = logging.getLogger(__name__)

HOST_KEY_FILE = "ssh_host_ed25519_key"
RECEIVER_MODULE = "encom.gitreceive.receiver"
CHUNK = 1 << 16
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
    if not APP_NAME_RE.match(name):
        raise PushRefused(f"invalid repository {path[:200]!r}: expected /<app>.git with a valid app name")
    return name


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's ed25519 host key, generated on first start and kept (clients remember it)."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private(path, key.export_private_key())
    path.with_suffix(".pub").write_bytes(key.export_public_key())
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

    def _write_hook(self, repo: Path) -> None:
        hooks = repo / "hooks"
        hooks.mkdir(exist_ok=True)
        script = hook_script(sys.executable)
        hook = hooks / "pre-receive"
        if hook.exists() and hook.read_text() == script:
            return
        tmp = hooks / "pre-receive.tmp"
        tmp.write_text(script)
        tmp.chmod(0o755)
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
        self.repos.root.mkdir(parents=True, exist_ok=True)

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

    async def _receive_pack(self, process: asyncssh.SSHServerProcess[bytes], repo: Path, app: App) -> int:
        env = git_env(
            {
                "ENCOM_DATA_DIR": str(self.settings.data_dir.resolve()),
                "ENCOM_APP_ID": app.id,
                "ENCOM_APP_NAME": app.name,
                "PYTHONUNBUFFERED": "1",
            }
        )
        proc = await asyncio.create_subprocess_exec(
            "git-receive-pack", str(repo),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=str(repo), start_new_session=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(process.stdin, proc.stdin))
        try:
            # The client needs all of receive-pack's output (the report-status comes last) before the exit.
            await asyncio.gather(_copy(proc.stdout, process.stdout), _copy(proc.stderr, process.stderr))
            return await proc.wait()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            if proc.returncode is None:
                await _stop_group(proc)


async def _feed(src: asyncssh.SSHReader[bytes], dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(CHUNK):
            dst.write(chunk)
            await dst.drain()
    except (ConnectionError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()


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
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
    )
    log.info("gitreceive listening on %s:%d", settings.bind, settings.ports.gitreceive)
    ctx.ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await asyncio.gather(*(conn.close() for conn in list(live)), return_exceptions=True)
        await server.wait_closed()
        await controller.aclose()
