"""One uid per app on this host, so one app's processes can neither signal another's nor read its files.

Allocated sequentially from FIRST_UID (gid = uid) and kept in a small JSON file the host owns: the same app gets the
same uid across jobs and encomd restarts."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FIRST_UID = 100_000
LAST_UID = 2**31 - 2  # below (uid_t)-1 and overflow ids


class UidAllocator:
    def __init__(self, path: Path, first: int = FIRST_UID) -> None:
        self.path = path
        self.first = first
        self.lock = threading.Lock()  # uid_for is called from the event loop and from worker threads
        self.uids: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Losing the table would hand an existing app's uid to another app: refuse to guess.
            raise RuntimeError(f"cannot read the app uid table {self.path}: {exc}") from exc
        if not isinstance(data, dict):
            raise RuntimeError(f"the app uid table {self.path} is not a JSON object")
        return {str(app): int(uid) for app, uid in data.items()}

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.uids, f, indent=0, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def uid_for(self, app_id: str) -> int:
        """The app's uid (and gid), allocated and persisted on first use."""
        with self.lock:
            uid = self.uids.get(app_id)
            if uid is None:
                uid = max(self.uids.values(), default=self.first - 1) + 1
                if uid > LAST_UID:
                    raise RuntimeError("no uid left for a new app")
                self.uids[app_id] = uid
                self._save()
                log.info("app %s runs as uid %d on this host", app_id, uid)
            return uid
