"""Provider simulators: small Starlette apps that speak each provider's documented API with scripted outcomes.

Use them over ``httpx.AsyncClient(transport=sim.transport(), base_url=...)`` in tests (``sim.client()`` does
both; ``transport()`` honours client read timeouts, unlike a bare ``httpx.ASGITransport``), or as real servers
with ``python -m tracker.providers.simulators {blaaiz|connectfi|cryptopocket} --port P``.
"""

from __future__ import annotations

from tracker.providers.simulators.blaaiz import BlaaizSimulator
from tracker.providers.simulators.common import SimulatorBase
from tracker.providers.simulators.connectfi import ConnectFiSimulator
from tracker.providers.simulators.cryptopocket import CryptoPocketSimulator
from tracker.providers.simulators.records import (
    Delivery,
    HostRouter,
    RequestRecord,
    StatusChange,
    TimeoutASGITransport,
    parse_rate,
)

SIMULATORS: dict[str, type[SimulatorBase]] = {
    BlaaizSimulator.name: BlaaizSimulator,
    ConnectFiSimulator.name: ConnectFiSimulator,
    CryptoPocketSimulator.name: CryptoPocketSimulator,
}

__all__ = [
    "SIMULATORS",
    "BlaaizSimulator",
    "ConnectFiSimulator",
    "CryptoPocketSimulator",
    "Delivery",
    "HostRouter",
    "RequestRecord",
    "SimulatorBase",
    "StatusChange",
    "TimeoutASGITransport",
    "parse_rate",
]
