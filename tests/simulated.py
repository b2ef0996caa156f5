"""Fixtures of a tracker that polls the connectFi and CryptoPocket simulators (no Blaaiz credentials: Blaaiz
is not polled), with its app over ASGI: for poll-now and submit tests."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import AppliedTransport, close, make_settings
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.providers.simulators import ConnectFiSimulator, CryptoPocketSimulator, HostRouter
from tracker.web.app import create_app


@pytest.fixture
def simulators(clock: FakeClock) -> dict[str, Any]:
    return {"connectfi": ConnectFiSimulator(clock=clock), "cryptopocket": CryptoPocketSimulator(clock=clock)}


@pytest.fixture
async def polled(database_url: str, clock: FakeClock, simulators: dict[str, Any]) -> AsyncIterator[Container]:
    settings = make_settings(
        database_url, connectfi_base_url=ConnectFiSimulator.default_base_url, connectfi_login="sim-connectfi-login",
        connectfi_password="sim-connectfi-password", cryptopocket_base_url=CryptoPocketSimulator.api_base_url,
        cryptopocket_api_key="sim-cryptopocket-key", cryptopocket_api_secret="sim-cryptopocket-secret",
        rate_limits={}, poll_interval=timedelta(minutes=5))
    container = build(settings, clock, transport=HostRouter.of(*simulators.values()))
    container.start()
    yield container
    await close(container)


@pytest.fixture
async def api(polled: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = AppliedTransport(create_app(polled), polled)
    async with httpx.AsyncClient(transport=transport, base_url="http://tracker.test") as http:
        yield http


def key(container: Container, scope: str) -> dict[str, str]:
    name = f"poll-{scope}-{next(_names)}"
    return {"authorization": f"Bearer {container.api_keys.create(name, scope)}"}


_names = itertools.count()


async def registered(api: httpx.AsyncClient, container: Container, provider: str, pcid: str) -> dict[str, Any]:
    response = await api.post("/v1/customers", headers=key(container, "write"),
                              json={"provider": provider, "provider_customer_id": pcid, "customer_type": "individual"})
    assert response.status_code == 201, response.text
    return dict(response.json())
