"""Counting the connections to a job's port from /proc/net/tcp and /proc/net/tcp6."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from encom.host.drain import connections, established_on, wait_drained

# Port 0x2382 = 9090. Listening (0A), two ESTABLISHED inbound (01) ones, the client ends of those (local port
# ephemeral, remote 9090), a TIME_WAIT (06) and a CLOSE_WAIT (08) on 9090, and an ESTABLISHED one on another port.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:2382 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:C350 0100007F:2382 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: 0100007F:2382 0100007F:C351 01 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0 20 4 30 10 -1
   4: 0100007F:C351 0100007F:2382 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0 20 4 30 10 -1
   5: 0100007F:2382 0100007F:C352 06 00000000:00000000 03:00000F3C 00000000     0        0 0 3
   6: 0100007F:2382 0100007F:C353 08 00000000:00000001 00:00000000 00000000  1000        0 1006 1 0 20 4 30 10 -1
   7: 0100007F:1F90 0100007F:C354 01 00000000:00000000 00:00000000 00000000  1000        0 1007 1 0 20 4 30 10 -1
"""

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:2382 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:2382 0000000000000000FFFF00000100007F:D432 01 00000000:00000000 00:00000000 00000000  1000        0 2003 1 0 20 4 30 10 -1
   3: 00000000000000000000000001000000:D433 00000000000000000000000001000000:2382 01 00000000:00000000 00:00000000 00000000     0        0 2004 1 0 20 4 30 10 -1
   4: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D434 01 00000000:00000000 00:00000000 00000000  1000        0 2005 1 0 20 4 30 10 -1
"""  # noqa: E501


def test_v4_counts_only_established_inbound_on_the_port() -> None:
    assert established_on(TCP, 0x2382) == 2
    assert established_on(TCP, 0x1F90) == 1


def test_v6_counts_only_established_inbound_on_the_port() -> None:
    assert established_on(TCP6, 0x2382) == 2  # ::1 and an IPv4-mapped address
    assert established_on(TCP6, 0x1F90) == 1


def test_other_ports_and_states_and_junk_are_ignored() -> None:
    assert established_on(TCP, 0xC350) == 1  # only the client end whose local port is 0xC350
    assert established_on(TCP, 12345) == 0
    assert established_on("", 0x2382) == 0
    assert established_on("garbage\n   9: nonsense\n  10: 0100007F:ZZZZ 0100007F:C350 01\n", 0x2382) == 0


def test_tables_are_summed_and_a_missing_one_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert connections(0x2382, [tmp_path / "tcp", tmp_path / "tcp6", tmp_path / "missing"]) == 4


async def test_wait_drained_on_a_real_socket() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        assert connections(port) == 1
        assert await wait_drained(port, settle=0.0, timeout=0.2) == 1  # bounded: still connected

        async def close_soon() -> None:
            await asyncio.sleep(0.2)
            accepted.close()
            client.close()

        closing = asyncio.create_task(close_soon())
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await wait_drained(port, settle=0.05, timeout=5.0) == 0
        assert loop.time() - started < 1.0, "returns as soon as the port is drained"
        await closing
    finally:
        accepted.close()
        client.close()
        server.close()
