"""Reports job states to the controller: in order per job, latest state wins, retried while it is unreachable."""

from __future__ import annotations

import asyncio
import logging

from encom.api.errors import ApiError
from encom.api.types import Job
from encom.controller.client import ControllerClient

log = logging.getLogger(__name__)

RETRY_MIN = 0.2
RETRY_MAX = 5.0


class JobReporter:
    def __init__(self, controller: ControllerClient) -> None:
        self.controller = controller
        self.pending: dict[str, Job] = {}
        self.wake = asyncio.Event()

    def report(self, job: Job) -> None:
        # A newer report replaces one not yet sent; one worker sends them, so a job's states never reorder.
        self.pending.pop(job.id, None)
        self.pending[job.id] = job
        self.wake.set()

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                job = next(iter(self.pending.values()))
                if await self._send(job):
                    delay = RETRY_MIN
                    if self.pending.get(job.id) is job:
                        del self.pending[job.id]
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)

    async def _send(self, job: Job) -> bool:
        """True when the report is done with (sent, or refused for good)."""
        try:
            await self.controller.put_job(job)
        except ApiError as exc:
            if 400 <= exc.status < 500 and exc.status not in (408, 429):
                log.warning("controller refused job %s (%s): %s", job.id, job.state, exc)
                return True
            log.info("cannot report job %s yet: %s", job.id, exc)
            return False
        return True
