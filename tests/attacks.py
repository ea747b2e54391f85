"""Scripts an attacking job runs (with `python3 -c`), shared by the host's sandbox tests and tests/security."""

from __future__ import annotations

IO_URING_SETUP = 425  # x86_64 and the generic table alike
UNSHARE = 272  # x86_64
CLONE_NEWUSER = 0x10000000

# Forks until refused; prints `error=<errno>` (or `none`), `forks=`, and the pids cgroup's `current=` and `max=`.
FORK_STORM = """
import os, time
kids = []
try:
    while len(kids) < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        kids.append(pid)
    print("error=none")
except OSError as exc:
    print(f"error={exc.errno}")
print(f"forks={len(kids)}")
print("current=" + open("/sys/fs/cgroup/pids/pids.current").read().strip())
print("max=" + open("/sys/fs/cgroup/pids/pids.max").read().strip())
for kid in kids:
    os.kill(kid, 9)
for kid in kids:
    os.waitpid(kid, 0)
"""


def syscall_probe(name: str, number: int, args: str) -> str:
    """A script making one raw syscall: prints `<name>=ok`, or `<name>=<strerror>` when it is refused."""
    return (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.syscall({number}, *{args}); "
        f"print('{name}=' + ('ok' if r >= 0 else os.strerror(ctypes.get_errno())))"
    )
