"""``GET /v1/customers/{id}`` through the fast path (tracker.web.fastpath) answers exactly as the full
Starlette path does, and hands everything it does not answer to the application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from starlette.types import Receive, Scope, Send

from tests.test_reads import seed
from tracker.web.app import create_app
from tracker.web.fastpath import CustomerReadFastPath


@pytest.fixture
async def both(container: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)), base_url="http://t")
    full = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container, fast_reads=False)),
                             base_url="http://t")
    async with fast, full:
        yield fast, full


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, list(response.headers.multi_items()), response.content


async def same(both: tuple[httpx.AsyncClient, httpx.AsyncClient], url: str, headers: dict[str, str]
               ) -> httpx.Response:
    fast, full = both
    got, expected = await fast.get(url, headers=headers), await full.get(url, headers=headers)
    assert answer(got) == answer(expected), url
    return got


async def test_every_customer_is_answered_byte_for_byte_as_the_full_path_does(both, engine: Engine,
                                                                             read_key) -> None:
    seed(engine, 60)  # pending ones (pending_seconds), unicode, stamps with and without microseconds
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT id FROM customers ORDER BY id"))]
    for customer_id in ids:
        url = f"/v1/customers/{customer_id}"
        plain = await same(both, url, read_key)
        assert plain.status_code == 200
        etag = plain.headers["etag"]
        assert (await same(both, url, {**read_key, "if-none-match": etag})).status_code == 304
    etag = plain.headers["etag"]
    for header, status in ((f"W/{etag}", 304), (f'"x", {etag}', 304), ("*", 304), ('"c0-v0-none"', 200),
                           ("", 200)):
        assert (await same(both, url, {**read_key, "if-none-match": header})).status_code == status


async def test_errors_and_other_requests_are_answered_by_the_application(both, engine: Engine,
                                                                          read_key) -> None:
    seed(engine, 3)
    cases: list[tuple[str, dict[str, str], int]] = [
        ("/v1/customers/1", {}, 401),  # no key
        ("/v1/customers/1", {"authorization": "Bearer trk_nope_nope"}, 401),  # unknown key
        ("/v1/customers/1", {"authorization": read_key["authorization"].replace("Bearer", "Basic")}, 401),
        ("/v1/customers/999", read_key, 404),
        ("/v1/customers/abc", read_key, 404),
        ("/v1/customers/\u0661", read_key, 404),  # an Arabic-Indic digit: not an id
        ("/v1/customers/1/", read_key, 307),  # Starlette's trailing-slash redirect, as before
        ("/v1/customers/0001", read_key, 200),  # the int converter reads it as 1
    ]
    for url, headers, status in cases:
        assert (await same(both, url, headers)).status_code == status, url


async def test_a_database_error_is_503_as_on_the_full_path(both, engine: Engine, read_key) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the column is dropped under the kept connection's feet on SQLite only")
    seed(engine, 3)
    assert (await same(both, "/v1/customers/1", read_key)).status_code == 200  # the key is in the cache now
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE customers DROP COLUMN rejection_reason"))
    response = await same(both, "/v1/customers/1", read_key)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


class Recorder:
    """The application behind the fast path: records what reaches it and answers 299."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_only_the_common_case_is_answered_without_the_application(container: Any, engine: Engine,
                                                                       read_key) -> None:
    seed(engine, 3)
    behind = Recorder()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=CustomerReadFastPath(behind, container)),
                             base_url="http://t")
    async with http:
        # The key is not in the cache yet: the application authenticates it (here it does not, so a second
        # client of the real app fills the cache first).
        assert (await http.get("/v1/customers/1", headers=read_key)).status_code == 299
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://t") as real:
            assert (await real.get("/v1/customers/1", headers=read_key)).status_code == 200
        behind.paths.clear()
        assert (await http.get("/v1/customers/1", headers=read_key)).status_code == 200
        assert (await http.get("/v1/customers/2", headers=read_key)).status_code == 200
        assert behind.paths == []
        for path in ("/v1/customers/999", "/v1/customers", "/v1/customers/1/history", "/healthz"):
            assert (await http.get(path, headers=read_key)).status_code == 299
        assert (await http.post("/v1/customers/1", headers=read_key)).status_code == 299
        assert behind.paths == ["/v1/customers/999", "/v1/customers", "/v1/customers/1/history", "/healthz",
                                "/v1/customers/1"]
