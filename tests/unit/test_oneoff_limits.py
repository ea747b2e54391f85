"""Whose limits a one-off job (`encom run`) gets: its web type's, another type's with --type, or the defaults."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from encom.api.errors import ValidationError
from encom.api.types import ProcessType, Release, Resources
from encom.controller.oneoff import one_off_resources

WEB = Resources(memory=256 << 20, max_procs=100, temp_disk=200 << 20)
WORKER = Resources(max_procs=50)


def release(**processes: ProcessType) -> Release:
    return Release(id="r1", app_id="a1", version=1, processes=processes, created_at=datetime.now(UTC))


def test_the_web_types_limits_by_default() -> None:
    both = release(web=ProcessType(cmd="w", resources=WEB), worker=ProcessType(cmd="k", resources=WORKER))
    assert one_off_resources(both, None) == WEB
    assert one_off_resources(both, "worker") == WORKER
    assert one_off_resources(release(worker=ProcessType(cmd="k", resources=WORKER)), None) == Resources()


def test_an_unknown_type_is_a_400_naming_the_types() -> None:
    with pytest.raises(ValidationError) as caught:
        one_off_resources(release(web=ProcessType(cmd="w")), "clock")
    assert caught.value.message == 'no process type "clock" in the current release (types: web)'
    assert caught.value.status == 400
