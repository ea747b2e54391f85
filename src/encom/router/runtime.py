"""HAProxy's Runtime API over its unix socket: one command per connection (non-interactive mode), so answers
never interleave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path

from encom.router.config import backend_mode, server_args, server_name

TIMEOUT = 5.0


class RuntimeAPIError(Exception):
    """HAProxy refused a runtime command (or could not be reached)."""


class RuntimeAPI:
    def __init__(self, socket: Path, timeout: float = TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout

    async def command(self, cmd: str, payload: Iterable[str] | None = None) -> str:
        """Send one command (with an optional `<<` payload, one line each) and return HAProxy's answer."""
        line = cmd if payload is None else cmd + " <<\n" + "".join(p + "\n" for p in payload)
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
                try:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    writer.write_eof()  # the master CLI answers only once the client has finished sending
                    data = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise RuntimeAPIError(f"haproxy runtime API at {self.socket}: {exc!r}") from exc
        return data.decode(errors="replace")

    async def expect(self, cmd: str, ok: str = "", payload: Iterable[str] | None = None) -> str:
        """Run a command that answers `ok` (a prefix; "" = an empty answer) on success."""
        out = await self.command(cmd, payload)
        text = out.strip()
        if (ok and not text.startswith(ok)) or (not ok and text):
            raise RuntimeAPIError(f"haproxy refused {cmd!r}: {text}")
        return text

    # ------------------------------------------------------------ info

    async def info(self) -> dict[str, str]:
        out = await self.command("show info")
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs}

    async def pid(self) -> int:
        return int((await self.info())["Pid"])

    async def servers(self, backend: str) -> dict[str, str]:
        """Server name -> "addr:port" as HAProxy has them now."""
        out = await self.command(f"show servers state {backend}")
        found: dict[str, str] = {}
        for line in out.splitlines():
            cols = line.split()
            if len(cols) > 18 and cols[0].isdigit() and cols[1] == backend:
                found[cols[3]] = f"{cols[4]}:{cols[18]}"
        return found

    # ------------------------------------------------------------ servers

    async def add_server(self, backend: str, addr: str, server_id: int, cookie_key: str | None = None) -> None:
        """Add and enable a server. HAProxy 2.6 gives a dynamic server without an explicit `id` no place in the
        consistent-hash tree that `balance random` draws from (it never gets traffic), so the caller picks one.

        For a sticky backend (`cookie_key`: its `dynamic-cookie-key`): 2.6 refuses `cookie <value>` on a dynamic
        server and computes its dynamic cookie from a wrong port, so the key is set again while the server is still
        in maintenance, which recomputes every server's cookie from its own address: the same value as a server
        read from the config file."""
        name = server_name(addr)
        await self.expect(
            f"add server {backend}/{name} {addr} {server_args(backend_mode(backend))} id {server_id}",
            ok="New server registered",
        )
        if cookie_key is not None:
            await self.expect(f"set dynamic-cookie-key backend {backend} {cookie_key}")
        await self.expect(f"enable server {backend}/{name}")

    async def enable_server(self, backend: str, addr: str) -> None:
        await self.expect(f"enable server {backend}/{server_name(addr)}")

    async def disable_server(self, backend: str, addr: str) -> None:
        await self.expect(f"disable server {backend}/{server_name(addr)}")

    async def delete_server(self, backend: str, addr: str) -> bool:
        """Delete a server already in maintenance; False while it still has connections (try again later)."""
        out = (await self.command(f"del server {backend}/{server_name(addr)}")).strip()
        if out.startswith("Server deleted"):
            return True
        if "connection" in out or "queue" in out:
            return False
        raise RuntimeAPIError(f"haproxy refused to delete {backend}/{server_name(addr)} ({addr}): {out}")

    async def connections(self, backend: str) -> dict[str, tuple[int, int]]:
        """Server name -> (connections in use, idle connections kept for reuse), from `show servers conn`."""
        out = await self.command(f"show servers conn {backend}")
        found: dict[str, tuple[int, int]] = {}
        for line in out.splitlines():
            cols = line.split()
            # bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim
            # idle_cur idle_per_thr[n]
            if len(cols) > 13 and "/" in cols[0] and not cols[0].startswith("#"):
                with contextlib.suppress(ValueError):
                    found[cols[0].split("/", 1)[1]] = (int(cols[6]), int(cols[13]))
        return found

    async def purge_idle(self, backend: str, addr: str) -> None:
        """Close the idle connections of a server in maintenance. HAProxy purges a server's idle pool when the
        server enters maintenance, but connections still in use then go back to the pool when their response
        ends (and `del server` refuses while any is there). Leaving maintenance through "drain" (weight 0: no
        new request can pick it) and entering it again purges them."""
        name = server_name(addr)
        await self.expect(f"set server {backend}/{name} state drain")
        await self.expect(f"set server {backend}/{name} state maint")

    # ------------------------------------------------------------ maps

    async def set_map_entry(self, map_path: Path, key: str, value: str, exists: bool) -> None:
        if exists:
            await self.expect(f"set map {map_path} {key} {value}")
        else:
            await self.expect(f"add map {map_path} {key} {value}")

    async def del_map_entry(self, map_path: Path, key: str) -> None:
        out = (await self.command(f"del map {map_path} {key}")).strip()
        if out and "not found" not in out.lower():
            raise RuntimeAPIError(f"haproxy refused to delete {key!r} from {map_path}: {out}")

    async def replace_map(self, map_path: Path, entries: list[tuple[str, str]]) -> None:
        """Swap a map's whole content atomically (ordered maps: `map_beg`/`map_end` take the first match)."""
        out = await self.expect(f"prepare map {map_path}", ok="New version created:")
        version = out.rsplit(":", 1)[1].strip()
        if entries:
            await self.expect(f"add map @{version} {map_path}", payload=[f"{k} {v}" for k, v in entries])
        await self.expect(f"commit map @{version} {map_path}")
