"""Every API's `/docs`, `/redoc` and `/openapi.json` need the same key as its routes: real roles on loopback ports
(discoverd, blobstore, a host, the controller over TLS), asked with no key, a wrong key, and the right one."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from encom.api.client import ca_context
from encom.api.settings import Ports, Settings
from encom.blobstore import service as blobstore_service
from encom.bootstrap.tls import ensure_tls
from encom.controller import service as controller_service
from encom.discoverd import service as discoverd_service
from encom.host import service as host_service
from tests.integration.roles import free_ports, running_role

pytestmark = [pytest.mark.integration]

PORTS = (58000, 58489)  # this file's role ports; its (unused) job ports are 58490-58499
DOC_PATHS = ("/docs", "/redoc", "/openapi.json")
START = 30.0


@dataclass
class Api:
    name: str
    url: str
    key: str


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    discoverd, blobstore, host, controller = free_ports(*PORTS, 4)
    ports = Ports(
        discoverd=discoverd, blobstore=blobstore, host=host, controller=controller, job_start=58490, job_end=58499
    )
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs-auth"), ports=ports)
    ensure_tls(settings)
    return settings


@contextlib.asynccontextmanager
async def all_roles(settings: Settings) -> AsyncIterator[list[Api]]:
    async with (
        running_role(discoverd_service.run, settings, "discoverd", START, START),
        running_role(blobstore_service.run, settings, "blobstore", START, START),
        running_role(host_service.run, settings, "host", START, START),
        running_role(controller_service.run, settings, "controller", START, START),
    ):
        secret = settings.internal_secret
        yield [
            Api("discoverd", settings.discoverd_url, secret),
            Api("blobstore", settings.blobstore_url, secret),
            Api("host", settings.host_url, secret),
            Api("controller", settings.controller_url, settings.cluster_key),
        ]


@pytest.fixture
async def apis(settings: Settings) -> AsyncIterator[list[Api]]:
    async with all_roles(settings) as found:
        yield found


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ca_context(settings.ca_cert_path), timeout=20.0) as client:
        yield client


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()}


async def test_docs_need_the_key_and_answer_with_it(apis: list[Api], http: httpx.AsyncClient) -> None:
    for api in apis:
        for path in DOC_PATHS:
            url = api.url + path
            for refused in ({}, {"Authorization": "Bearer wrong"}, basic("wrong")):
                response = await http.get(url, headers=refused)
                assert response.status_code == 401, f"{api.name} {path} with {refused}: {response.status_code}"
                assert response.json()["code"] == "unauthorized"
                assert "Basic" in response.headers["www-authenticate"]  # so a browser asks for the key
            for accepted in ({"Authorization": f"Bearer {api.key}"}, basic(api.key)):
                response = await http.get(url, headers=accepted)
                assert response.status_code == 200, f"{api.name} {path}: {response.status_code} {response.text}"
        schema = (await http.get(api.url + "/openapi.json", headers=basic(api.key))).json()
        assert schema["paths"], f"{api.name}'s OpenAPI lists no routes"


async def test_internal_secret_does_not_open_the_controller_docs(apis: list[Api], http: httpx.AsyncClient) -> None:
    controller = next(api for api in apis if api.name == "controller")
    others = {api.key for api in apis} - {controller.key}
    for key in others:
        response = await http.get(controller.url + "/openapi.json", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401


async def test_ping_stays_open(apis: list[Api], http: httpx.AsyncClient) -> None:
    for api in apis:
        assert (await http.get(api.url + "/ping")).status_code == 200
