"""gitreceive removes a deleted app's repository: on the controller's `app_deletion` event, and at start for apps
deleted while it was not following (a real controller; real `git init` repositories)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import pytest

from encom.controller.client import ControllerClient
from encom.gitreceive.service import Repos, remove_deleted_repos
from tests.integration.roles import eventually

pytestmark = [pytest.mark.integration]


async def test_a_deleted_apps_repo_goes(client: ControllerClient, tmp_path_factory: pytest.TempPathFactory) -> None:
    repos = Repos(tmp_path_factory.mktemp("repos"))
    kept = await client.create_app("kept")
    doomed = await client.create_app("doomed")
    for app_id in (kept.id, doomed.id, str(uuid.uuid4())):  # the last: an app deleted while gitreceive was down
        await repos.prepare(app_id)
    assert len(repos.app_ids()) == 3

    cleaner = asyncio.create_task(remove_deleted_repos(client, repos))
    try:
        await eventually(_equals(repos, {kept.id, doomed.id}), "the orphan repository to go", seconds=15)
        await client.delete_app("doomed")
        await eventually(_equals(repos, {kept.id}), "the deleted app's repository to go", seconds=15)
    finally:
        cleaner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleaner
    assert sorted(p.name for p in repos.root.iterdir()) == [f"{kept.id}.git"]


def _equals(repos: Repos, expected: set[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return repos.app_ids() == expected

    return check
