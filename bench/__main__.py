"""`make bench`: every benchmark, each printing its own report (ratios against a baseline run side by side).

uv run python -m bench                      # all of them, default options
uv run python -m bench deploy --runs 5      # one of them, with its own options
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import container_start, deploy, router, rss

BENCHMARKS: dict[str, tuple[str, Callable[[], None]]] = {
    "container_start": ("container start-to-listening vs bare process", container_start.main),
    "deploy": ("push to first 200 and failed requests during a redeploy vs venv + gunicorn", deploy.main),
    "router": ("router throughput, route to first 200 and keep-alive connections vs hand-written HAProxy", router.main),
    "rss": ("encomd's RSS after a session of pushes, scaling, logs, route churn and deletes vs idle", rss.main),
}


def run_one(name: str, options: list[str]) -> None:
    title, bench_main = BENCHMARKS[name]
    print(f"== {title}", flush=True)
    sys.argv = [f"python -m bench {name}", *options]  # each benchmark's main parses its own options
    bench_main()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", nargs="?", choices=sorted(BENCHMARKS), help="one benchmark (default: all)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="that benchmark's options, e.g. --runs 5")
    args = parser.parse_args()
    if args.name:
        run_one(args.name, args.options)
        return
    for name in BENCHMARKS:
        run_one(name, [])


if __name__ == "__main__":
    main()
