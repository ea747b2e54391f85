"""The contract between encomd and its roles.

A role is `async def run(ctx: RoleContext) -> None`, exported as `run` from `encom.<role>.service`. It serves
until cancelled, calls `ctx.ready.set()` once it accepts requests, and cleans up in `finally`. When
`ctx.detach` is true at cancellation, it leaves its children (containers, HAProxy) running so that a new
encomd can adopt them; otherwise it stops them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from encom.api.settings import Settings


@dataclass
class RoleContext:
    settings: Settings
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    detach: bool = False
