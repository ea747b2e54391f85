"""`make bench`: every benchmark, each printing its own report (ratios against a baseline run side by side)."""

from __future__ import annotations

import asyncio

from bench import container_start


def main() -> None:
    print("== container start-to-listening vs bare process")
    print(container_start.report(asyncio.run(container_start.run(20))))


if __name__ == "__main__":
    main()
