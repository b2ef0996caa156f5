"""Shared fixtures. The whole suite runs on SQLite (default) or PostgreSQL (TEST_DB_BACKEND=postgres).

PostgreSQL: TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) is the admin
connection; the suite creates its own database and empties it between tests. Under CI a missing server is a
failure; locally the PostgreSQL run skips.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db import migrate
from tracker.db.engine import make_engine
from tracker.settings import Settings
from tracker.web.app import create_app

pytest_plugins = ["tests.simulated"]  # fixtures of a tracker polling the simulators
SECRET = "whsec_test_blaaiz_1"
OLD_SECRET = "whsec_test_blaaiz_0"
BACKEND = os.environ.get("TEST_DB_BACKEND", "sqlite")
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("notifications", "alerts", "history", "uploads", "inbound_events", "customers", "api_keys",
          "provider_state", "changes")


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}, and CI requires it")
    pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN}")


def create_pg_database(prefix: str = "tracker_test") -> str:
    """Create an empty database and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    require_postgres()
    url = create_pg_database()
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for one test, on the backend this run is for."""
    if BACKEND == "postgres":
        url = request.getfixturevalue("pg_session_url")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        engine.dispose()
        yield url
    else:
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "blaaiz_webhook_secrets": (SECRET, OLD_SECRET),
                              "blaaiz_webhook_tolerance": 300, "api_key_cache_ttl": timedelta(seconds=30)}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def container(settings: Settings, clock: FakeClock) -> Iterator[Container]:
    built = build(settings, clock)
    built.start()
    yield built
    built.stop()
    built.engine.dispose()


@pytest.fixture
def engine(container: Container) -> Engine:
    return container.engine


class AppliedTransport(httpx.AsyncBaseTransport):
    """The app over ASGI; after each webhook's answer, the applier has applied what was stored (``drain``), so a
    test reads the effect of the event it posted without waiting on the applier's thread."""

    def __init__(self, app: Any, container: Container) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.container = container

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.startswith("/webhooks/"):
            await asyncio.to_thread(self.container.applier.drain)
        return response


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(container)
    async with httpx.AsyncClient(transport=AppliedTransport(app, container), base_url="http://tracker.test") as http:
        yield http


def _key(container: Container, scope: str) -> dict[str, str]:
    return {"authorization": f"Bearer {container.api_keys.create(f'test-{scope}', scope)}"}


@pytest.fixture
def read_key(container: Container) -> dict[str, str]:
    return _key(container, "read")


@pytest.fixture
def write_key(container: Container) -> dict[str, str]:
    return _key(container, "write")


@pytest.fixture
def admin_key(container: Container) -> dict[str, str]:
    return _key(container, "admin")


def blaaiz_event(customer_id: str = "cus_1", new_status: str = "VERIFIED", *, event_id: str | None = None,
                 updated_at: str = "2026-01-05T09:30:00Z", event_type: str = "customer.status_changed",
                 old_status: str = "PROCESSING", comment: str | None = None) -> dict[str, Any]:
    """A Blaaiz customer webhook body, shaped as the docs show it (the e-mail is a placeholder)."""
    return {
        "message": "Customer status updated", "event_type": event_type, "customer_id": customer_id,
        "customer_email": "someone@example.invalid", "old_status": old_status, "new_status": new_status,
        "comment": comment, "updated_at": updated_at, "event_id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": "customer",
    }


def sign(body: bytes, timestamp: int | str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, timestamp: int, secret: str = SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "x-blaaiz-timestamp": str(timestamp),
            "x-blaaiz-signature": sign(body, timestamp, secret)}


async def post_blaaiz(client: httpx.AsyncClient, clock: FakeClock, payload: Any, **kwargs: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    timestamp = int(clock.now().timestamp())
    return await client.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, timestamp, **kwargs))


async def register(client: httpx.AsyncClient, key: dict[str, str], pcid: str = "cus_1", **fields: Any
                   ) -> dict[str, Any]:
    body = {"provider": "blaaiz", "provider_customer_id": pcid, "customer_type": "individual", **fields}
    response = await client.post("/v1/customers", json=body, headers=key)
    assert response.status_code in (200, 201), response.text
    data: dict[str, Any] = response.json()
    return data


async def close(container: Container) -> None:
    """Stop what a test's tracker started (polls and deliveries in flight finish first) and close its pools."""
    await container.stop_worker()
    container.stop()
    container.engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """``tracker serve`` in a real process, for tests that need real HTTP, real processes and kill -9."""

    def __init__(self, database_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TRACKER_DATABASE_URL": database_url,
                    "TRACKER_BLAAIZ_WEBHOOK_SECRETS": SECRET, "TRACKER_LOG_LEVEL": "warning", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "serve", "--no-worker", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"server exited: {output}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
