"""`python -m encom.bootstrap up|down|status`: what `make up` and `make down` run."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from encom.bootstrap import local

CLI_LINK = Path("/usr/local/bin/encom")


def link_cli() -> None:
    """Put the `encom` command on PATH (the virtualenv's entry point)."""
    target = Path(sys.executable).parent / "encom"
    if not target.exists() or not os.access(CLI_LINK.parent, os.W_OK):
        return
    if CLI_LINK.is_symlink() or CLI_LINK.exists():
        if CLI_LINK.resolve() == target.resolve():
            return
        CLI_LINK.unlink()
    CLI_LINK.symlink_to(target)


def configure_cli(line: str) -> None:
    argv = shlex.split(line)
    encom = Path(sys.executable).parent / "encom"
    subprocess.run([str(encom), *argv[1:3], "-f", *argv[3:]], check=True)


def cmd_up(args: argparse.Namespace) -> int:
    settings = local.load_or_create(args.state_dir, args.port_base, args.domain)
    try:
        pid = local.start(settings)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    line = local.cluster_add_line(settings)
    print(f"encomd is running (pid {pid}, state in {settings.data_dir}).")
    print("Add this cluster to the encom CLI with:\n")
    print(f"  {line}\n")
    if not args.no_cli:
        link_cli()
        configure_cli(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not (args.state_dir / "encomd.json").exists():
        print(f"no encom state in {args.state_dir}")
        return 0
    settings = local.load_or_create(args.state_dir)
    stopped = local.stop(settings, detach=args.detach)
    print("encomd stopped." if stopped else "encomd was not running.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = local.load_or_create(args.state_dir)
    pid = local.running_pid(settings)
    print(f"encomd running (pid {pid})" if pid else "encomd not running")
    return 0 if pid else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encom.bootstrap")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start encomd with every role and print the cluster add line")
    up.add_argument("--port-base", type=int, help="compact high-port layout (tests, side-by-side clusters)")
    up.add_argument("--domain", help="cluster domain (default encom.localhost)")
    up.add_argument("--no-cli", action="store_true", help="do not configure the local encom CLI")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop encomd and everything it started")
    down.add_argument("--detach", action="store_true", help="leave jobs and the router running")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status")
    status.set_defaults(func=cmd_status)
    for p in (up, down, status):
        p.add_argument("--state-dir", type=Path, default=Path("/var/lib/encom"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
