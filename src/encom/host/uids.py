"""One uid per app on this host, so one app's processes can neither signal another's nor read its files.

Allocated sequentially from FIRST_UID (gid = uid) and kept in a small JSON file the host owns: the same app gets the
same uid across jobs and encomd restarts. A deleted app's entry goes, but the high-water mark (`next`) stays, so its
uid is never given to another app (which could otherwise read whatever the old uid still owns).

The file: `{"next": <uid>, "apps": {"<app id>": <uid>, ...}}` (older versions kept only the `apps` mapping)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from encom.api.files import write_private

log = logging.getLogger(__name__)

FIRST_UID = 100_000
LAST_UID = 2**31 - 2  # below (uid_t)-1 and overflow ids


class UidAllocator:
    def __init__(self, path: Path, first: int = FIRST_UID) -> None:
        self.path = path
        self.first = first
        self.lock = threading.Lock()  # uid_for is called from the event loop and from worker threads
        self.uids, self.next = self._load()

    def _load(self) -> tuple[dict[str, int], int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}, self.first
        except (OSError, ValueError) as exc:
            # Losing the table would hand an existing app's uid to another app: refuse to guess.
            raise RuntimeError(f"cannot read the app uid table {self.path}: {exc}") from exc
        if not isinstance(data, dict):
            raise RuntimeError(f"the app uid table {self.path} is not a JSON object")
        if "apps" not in data:  # the old format: the mapping alone
            data = {"apps": data}
        if not isinstance(data["apps"], dict):
            raise RuntimeError(f"the app uid table {self.path} has no mapping of apps")
        try:
            uids = {str(app): int(uid) for app, uid in data["apps"].items()}
            stored_next = int(data.get("next", self.first))
        except (TypeError, ValueError) as exc:
            raise RuntimeError(f"the app uid table {self.path} is malformed: {exc}") from exc
        return uids, max(stored_next, self.first, max(uids.values(), default=0) + 1)

    def _save(self) -> None:
        write_private(self.path, json.dumps({"next": self.next, "apps": self.uids}, sort_keys=True), fsync=True)

    def uid_for(self, app_id: str) -> int:
        """The app's uid (and gid), allocated and persisted on first use."""
        with self.lock:
            uid = self.uids.get(app_id)
            if uid is None:
                uid = self.next
                if uid > LAST_UID:
                    raise RuntimeError("no uid left for a new app")
                self.uids[app_id] = uid
                self.next = uid + 1
                self._save()
                log.info("app %s runs as uid %d on this host", app_id, uid)
            return uid

    def forget(self, app_id: str) -> None:
        """A deleted app: its entry goes (no record of its id is left); its uid is not handed out again."""
        with self.lock:
            if self.uids.pop(app_id, None) is not None:
                self._save()
