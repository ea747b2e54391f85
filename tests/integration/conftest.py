"""Fixtures shared by the integration tests: a controller role on a temp data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from encom.api.client import ca_context
from encom.api.settings import Ports, Settings
from encom.bootstrap.tls import ensure_tls
from encom.controller import service
from encom.controller.client import ControllerClient
from tests.integration.roles import free_port, running_role

START_TIMEOUT = 20.0
PORTS = (23000, 23999)  # the controller


@asynccontextmanager
async def running_controller(settings: Settings) -> AsyncIterator[ControllerClient]:
    verify = ca_context(settings.ca_cert_path)
    async with (
        running_role(service.run, settings, "controller", START_TIMEOUT, START_TIMEOUT),
        ControllerClient(settings.controller_url, settings.cluster_key, verify=verify) as client,
    ):
        yield client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path, ports=Ports(controller=free_port(*PORTS)))
    ensure_tls(settings)
    return settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[ControllerClient]:
    async with running_controller(settings) as client:
        yield client
