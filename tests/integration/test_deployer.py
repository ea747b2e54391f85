"""The controller's deployer over its real API, with the test in the scheduler's seat.

The deployer only sees formations it writes and the job records the scheduler reports (`PUT /jobs`), so a
test that follows the formation events and reports jobs exercises every path: the order of steps of each
strategy, a crashing new release, refusals while a deployment is in flight, recovery after a restart.
Real scheduling and real containers are covered by tests/e2e/test_deploys.py.
"""

from __future__ import annotations

import pytest

from encom.api.settings import Settings
from encom.api.types import Deployment, Event
from encom.controller.client import ControllerClient
from tests.integration.conftest import running_controller
from tests.integration.deploys import deploy, scheduler
from tests.integration.test_controller import expect_error, release_with, within

pytestmark = pytest.mark.integration


async def counts(client: ControllerClient, app: str, release_id: str) -> dict[str, int]:
    formation = await client.get_formation(app, release_id)
    return formation.processes if formation else {}


async def test_first_deploy_then_one_by_one_for_web_apps(client: ControllerClient) -> None:
    await client.create_app("example")
    v1 = await release_with(client, "example", "web", "worker")
    async with scheduler(client) as player:
        first = await deploy(client, "example", v1.id, {"web": 2, "worker": 1})
        assert (first.status, first.strategy, first.old_release_id, first.error) == (
            "complete",
            "one-by-one",
            None,
            None,
        )
        assert (await client.current_release("example")) == v1
        player.log.clear()

        v2 = await release_with(client, "example", "web", "worker")
        second = await deploy(client, "example", v2.id)
    assert (second.status, second.processes, second.old_processes) == (
        "complete",
        {"web": 2, "worker": 1},
        {"web": 2, "worker": 1},
    )
    assert player.log == [
        "v2 web up", "v1 web stopping", "v2 web up", "v1 web stopping",  # web first, one new up before one old goes
        "v2 worker up", "v1 worker stopping",
    ]  # fmt: skip
    assert (await client.get_app("example")).release_id == v2.id
    assert await counts(client, "example", v1.id) == {"web": 0, "worker": 0}
    assert await counts(client, "example", v2.id) == {"web": 2, "worker": 1}
    listed = await client.list_deployments("example")
    assert [(d.id, d.status) for d in listed] == [(second.id, "complete"), (first.id, "complete")]
    assert listed[0].finished_at is not None and listed[0].finished_at >= listed[0].created_at
    assert await client.get_deployment(second.id) == listed[0]


async def test_all_at_once_by_app_setting_and_for_apps_without_web(client: ControllerClient) -> None:
    await client.create_app("example")
    await client.update_app("example", {"strategy": "all-at-once"})
    v1 = await release_with(client, "example", "web")
    v2 = await release_with(client, "example", "web")
    async with scheduler(client) as player:
        await deploy(client, "example", v1.id, {"web": 2})
        player.log.clear()
        assert (await deploy(client, "example", v2.id)).strategy == "all-at-once"
    assert player.log == ["v2 web up", "v2 web up", "v1 web stopping", "v1 web stopping"]

    await client.create_app("jobs")
    w1 = await release_with(client, "jobs", "worker")
    async with scheduler(client):
        assert (await deploy(client, "jobs", w1.id, {"worker": 1})).strategy == "all-at-once"


async def test_a_crashing_release_is_rolled_back(client: ControllerClient) -> None:
    await client.create_app("example")
    v1 = await release_with(client, "example", "web")
    v2 = await release_with(client, "example", "web")
    async with scheduler(client, crash_release=v2.id) as player:
        await deploy(client, "example", v1.id, {"web": 2})
        failed = await deploy(client, "example", v2.id)
        assert (await client.get_app("example")).release_id == v1.id
        assert await counts(client, "example", v1.id) == {"web": 2}
        assert await counts(client, "example", v2.id) == {"web": 0}
        player.crash_release = None
        again = await deploy(client, "example", v2.id)  # the app can be deployed again
    assert (again.status, again.old_release_id) == ("complete", v1.id)
    assert failed.status == "failed"
    assert failed.error is not None and "web job" in failed.error and "crashed: exited with status 1" in failed.error
    crashed_at = player.log.index("v2 web crashed")
    assert "v1 web stopping" not in player.log[:crashed_at]  # no old job was touched before a new one came up
    listed = await client.list_deployments("example")
    assert [d.status for d in listed] == ["complete", "failed", "complete"]


async def test_one_deployment_at_a_time(client: ControllerClient) -> None:
    await client.create_app("example")
    v1 = await release_with(client, "example", "web")
    v2 = await release_with(client, "example", "web")
    v3 = await release_with(client, "example", "web")
    async with scheduler(client, stall_release=v2.id):
        await deploy(client, "example", v1.id, {"web": 1})
        current = await expect_error(400, client.deploy("example", v1.id))
        assert "already the current release" in current.message
        pending = await client.deploy("example", v2.id)
        assert pending.status == "pending"
        busy = await expect_error(409, client.deploy("example", v3.id))
        assert busy.message == f'cannot create deploy: deployment {pending.id} of app "example" is in progress'
        scaling = await expect_error(409, client.put_formation("example", v1.id, {"web": 3}))
        assert "cannot scale" in scaling.message


async def test_app_settings_are_checked(client: ControllerClient) -> None:
    await client.create_app("example")
    bad = await expect_error(400, client.update_app("example", {"strategy": "blue-green"}))
    assert bad.message == 'unknown deploy strategy "blue-green" (expected one of: one-by-one, all-at-once)'
    for grace in ("-1", "abc", "nan", "99999"):
        error = await expect_error(400, client.update_app("example", {"stop_grace": grace}))
        assert error.message.startswith("stop_grace must be a number of seconds between 0 and 3600")
    await expect_error(400, client.update_app("example", {"bad key": "x"}))
    app = await client.update_app("example", {"stop_grace": "5", "team": "payments"})
    assert app.meta == {"stop_grace": "5", "team": "payments"}
    assert (await client.update_app("example", {"team": None})).meta == {"stop_grace": "5"}
    await expect_error(404, client.update_app("nosuch", {"team": "x"}))


async def test_release_phase_without_a_host_fails_and_keeps_the_old_release(client: ControllerClient) -> None:
    await client.create_app("example")
    v1 = await release_with(client, "example", "web")
    v2 = await release_with(client, "example", "web", "release")
    async with scheduler(client) as player:
        await deploy(client, "example", v1.id, {"web": 1})
        player.log.clear()
        failed = await deploy(client, "example", v2.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.startswith("cannot run the release command")
    assert failed.release_job_id is not None
    assert player.log == []  # no job of v2 ever started
    assert (await client.get_app("example")).release_id == v1.id
    await expect_error(400, client.put_formation("example", v2.id, {"release": 1}))


async def test_a_deployment_cut_short_by_a_restart_is_rolled_back(settings: Settings) -> None:
    async with running_controller(settings) as client:
        await client.create_app("example")
        v1 = await release_with(client, "example", "web")
        v2 = await release_with(client, "example", "web")
        async with scheduler(client, stall_release=v2.id):
            await deploy(client, "example", v1.id, {"web": 1})
            since = await client.last_event_id()
            stalled = await client.deploy("example", v2.id)
            await within("the new release to be current", next_event(client, "app_release", since))
    async with running_controller(settings) as client:
        ended = Deployment.model_validate(
            (await within("the rollback", next_event(client, "deployment", since, stalled.id, "failed"))).data
        )
        assert (ended.status, ended.error) == ("failed", "interrupted: the controller restarted during the deployment")
        assert (await client.get_app("example")).release_id == v1.id
        assert await counts(client, "example", v1.id) == {"web": 1}
        assert await counts(client, "example", v2.id) == {"web": 0}


async def next_event(
    client: ControllerClient, kind: str, since: int, object_id: str | None = None, status: str | None = None
) -> Event:
    """The first `kind` event after `since` (of `object_id`, with data `status`, when given)."""
    async for event in client.events(object_types=[kind], last_event_id=since):
        if object_id in (None, event.object_id) and status in (None, event.data.get("status")):
            return event
    raise AssertionError("the event stream ended")
