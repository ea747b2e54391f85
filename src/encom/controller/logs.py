"""App logs: fan-in from every host agent registered in discoverd, merged by time."""

from __future__ import annotations

import asyncio
import logging

from encom.api.errors import ApiError, ValidationError
from encom.api.settings import Settings
from encom.api.types import LogLine
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host.client import HostClient

MAX_LINES = 10000
log = logging.getLogger(__name__)


def check_lines(lines: int) -> None:
    if not 1 <= lines <= MAX_LINES:
        raise ValidationError(f"lines must be between 1 and {MAX_LINES}")


async def host_urls(settings: Settings) -> list[str]:
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
        try:
            instances = await discoverd.instances(HOST_SERVICE)
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
    return [i.meta["url"] for i in instances if i.meta.get("url")]


async def _host_log(settings: Settings, url: str, app_id: str, lines: int, process_type: str | None) -> list[LogLine]:
    try:
        async with HostClient(url, settings.internal_secret) as host:
            return await host.app_log(app_id, lines, process_type)
    except ApiError as exc:
        log.warning("no logs from host %s: %s", url, exc)
        return []


async def app_log(settings: Settings, app_id: str, lines: int, process_type: str | None) -> list[LogLine]:
    check_lines(lines)
    urls = await host_urls(settings)
    parts = await asyncio.gather(*(_host_log(settings, url, app_id, lines, process_type) for url in urls))
    merged = sorted((line for part in parts for line in part), key=lambda line: line.timestamp)
    return merged[-lines:]
