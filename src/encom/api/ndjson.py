"""Newline-delimited JSON log streams, as the host and the controller serve them.

A followed stream sends the history, then `{"live":true}` once, then new lines; an empty line is a keepalive.
In the source iterators, None stands for "the history has been sent" the first time and a keepalive after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from pydantic import BaseModel

from encom.api.types import LogLine

LIVE_MARK = b'{"live":true}\n'
KEEPALIVE = b"\n"


def line(item: BaseModel) -> bytes:
    return (item.model_dump_json() + "\n").encode()


async def lines(items: Iterable[BaseModel] | AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    if isinstance(items, AsyncIterator):
        async for item in items:
            yield line(item)
    else:
        for item in items:
            yield line(item)


async def follow(source: AsyncIterator[BaseModel | None]) -> AsyncIterator[bytes]:
    live = False
    async for item in source:
        if item is not None:
            yield line(item)
        elif not live:
            live = True
            yield LIVE_MARK
        else:
            yield KEEPALIVE


def log_item(item: object) -> LogLine | None:
    """A decoded line of a followed log stream: a LogLine, or None for the `{"live":true}` mark."""
    return None if item == {"live": True} else LogLine.model_validate(item)
