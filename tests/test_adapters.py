"""The real provider adapters against the simulators, over real HTTP semantics (httpx into the ASGI apps), with one
FakeClock shared by adapter and simulator. No real sleeps except the short hangs that exercise client timeouts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest

from tracker.clock import FakeClock
from tracker.domain.lifecycle import Source, Trigger
from tracker.providers import connectfi, cryptopocket
from tracker.providers.base import CustomerRef, ProviderError, StatusReport, TokenCache, retry_after_seconds
from tracker.providers.blaaiz import BlaaizAdapter
from tracker.providers.connectfi import ConnectFiAdapter
from tracker.providers.cryptopocket import CryptoPocketAdapter
from tracker.providers.simulators import BlaaizSimulator, ConnectFiSimulator, CryptoPocketSimulator, SimulatorBase

TIMEOUT = 5.0  # generous: only the hang tests are meant to hit a timeout, and they use SHORT_TIMEOUT
SHORT_TIMEOUT = 0.2
PROVIDERS = ("blaaiz", "connectfi", "cryptopocket")


# ----------------------------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    """One provider's simulator and real adapter on a shared FakeClock."""

    name: str
    clock: FakeClock
    sim: SimulatorBase
    adapter: Any
    http: httpx.AsyncClient
    token_path: str
    data_path: str
    #: (HTTP status, body) of the provider's own "this token is no good" answer on a data call
    refusal: tuple[int, Any]
    #: add a record with a raw status; returns what the adapter is asked about
    add: Callable[..., CustomerRef]
    #: a reference the provider does not know
    unknown: CustomerRef

    async def fetch(self, ref: CustomerRef) -> StatusReport:
        report: StatusReport = await self.adapter.fetch_status(ref)
        return report

    async def error(self, ref: CustomerRef) -> ProviderError:
        with pytest.raises(ProviderError) as caught:
            await self.adapter.fetch_status(ref)
        assert caught.value.provider == self.name
        return caught.value

    def tokens(self) -> int:
        return self.sim.count(self.token_path)

    def data_calls(self) -> int:
        return self.sim.count(self.data_path)


def make_adapter(name: str, sim: Any, http: httpx.AsyncClient, clock: FakeClock, *, base_url: str | None = None,
                 secret: str | None = None) -> Any:
    if name == "blaaiz":
        return BlaaizAdapter(http, clock, base_url or sim.default_base_url, sim.client_id,
                             secret or sim.client_secret)
    if name == "connectfi":
        return ConnectFiAdapter(http, clock, base_url or sim.default_base_url, sim.login, secret or sim.password)
    return CryptoPocketAdapter(http, clock, base_url or sim.api_base_url, sim.api_key, secret or sim.api_secret)


def make_sim(name: str, clock: FakeClock) -> Any:
    if name == "blaaiz":
        return BlaaizSimulator(clock=clock)
    if name == "connectfi":
        return ConnectFiSimulator(clock=clock)
    return CryptoPocketSimulator(clock=clock)


def build_rig(name: str, clock: FakeClock, http: httpx.AsyncClient, sim: Any) -> Rig:
    adapter = make_adapter(name, sim, http, clock)
    if name == "blaaiz":
        def add_blaaiz(customer_id: str, status: str, **fields: Any) -> CustomerRef:
            sim.add_customer(customer_id, status, **fields)
            return CustomerRef(customer_id, str(fields.get("type", "individual")))

        return Rig(name, clock, sim, adapter, http, "/oauth/token", "/api/external/customer/",
                   (401, {"message": "Unauthenticated."}), add_blaaiz, CustomerRef("cus_nobody"))
    if name == "connectfi":
        def add_connectfi(customer_id: str, status: str, **fields: Any) -> CustomerRef:
            sim.add_application(f"app_{customer_id}", customer_id, status, **fields)
            return CustomerRef(customer_id, application_id=f"app_{customer_id}")

        return Rig(name, clock, sim, adapter, http, "/auth/get-token", "/akepa/status",
                   (401, {"requestId": "r-1", "code": "unauthorized",
                          "message": "Token is missing, invalid or expired"}),
                   add_connectfi, CustomerRef("cust_nobody", application_id="app_nobody"))

    def add_cryptopocket(customer_id: str, status: str, **fields: Any) -> CustomerRef:
        sim.add_customer(customer_id, status, **fields)
        return CustomerRef(customer_id)

    return Rig(name, clock, sim, adapter, http, "/api/authenticate", "/api/kyc/check",
               (200, {"status": "error", "error": "authorization_incorrect"}), add_cryptopocket,
               CustomerRef("usr_nobody"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=PROVIDERS)
async def rig(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Rig]:
    sim = make_sim(request.param, clock)
    async with httpx.AsyncClient(transport=sim.transport(), timeout=TIMEOUT) as http:
        yield build_rig(request.param, clock, http, sim)


@pytest.fixture
async def blaaiz(clock: FakeClock) -> AsyncIterator[Rig]:
    sim = make_sim("blaaiz", clock)
    async with httpx.AsyncClient(transport=sim.transport(), timeout=TIMEOUT) as http:
        yield build_rig("blaaiz", clock, http, sim)


@pytest.fixture
async def cfi(clock: FakeClock) -> AsyncIterator[Rig]:
    sim = make_sim("connectfi", clock)
    async with httpx.AsyncClient(transport=sim.transport(), timeout=TIMEOUT) as http:
        yield build_rig("connectfi", clock, http, sim)


@pytest.fixture
async def cp(clock: FakeClock) -> AsyncIterator[Rig]:
    sim = make_sim("cryptopocket", clock)
    async with httpx.AsyncClient(transport=sim.transport(), timeout=TIMEOUT) as http:
        yield build_rig("cryptopocket", clock, http, sim)


def record_status(name: str) -> str:
    """A documented in-progress status of each provider."""
    return {"blaaiz": "PROCESSING", "connectfi": "running", "cryptopocket": "processing"}[name]


# ------------------------------------------------------------------------------- mapping: every value


@pytest.mark.parametrize(("raw", "trigger"), [
    ("PENDING", None),
    ("PROCESSING", Trigger.PROVIDER_REVIEWING),
    ("VERIFIED", Trigger.PROVIDER_APPROVED),
    ("REJECTED", Trigger.PROVIDER_REJECTED),
])
async def test_blaaiz_maps_every_documented_status(blaaiz: Rig, raw: str, trigger: Trigger | None) -> None:
    ref = blaaiz.add("cus_1", raw)
    blaaiz.clock.advance(timedelta(minutes=3))
    report = await blaaiz.fetch(ref)
    assert (report.provider_customer_id, report.provider_status, report.unknown) == ("cus_1", raw, False)
    assert report.signal.trigger == trigger
    assert report.signal.source == Source.POLL
    assert report.signal.provider_status == raw
    assert report.signal.provider_time == blaaiz.clock.now() - timedelta(minutes=3)
    assert report.flags == ()
    assert report.signal.comment is None


async def test_blaaiz_rejection_comments_and_the_uncommented_business(blaaiz: Rig) -> None:
    commented = blaaiz.add("biz_1", "REJECTED", type="business",
                           owners=[{"id": "own_1", "status": "REJECTED", "admin_comments": "ID expired"},
                                   {"id": "own_2", "status": "APPROVED", "admin_comments": None}],
                           documents=[{"id": "doc_1", "status": "REJECTED", "admin_comments": "Statement unreadable"}])
    report = await blaaiz.fetch(commented)
    assert report.signal.trigger == Trigger.PROVIDER_REJECTED
    assert report.signal.comment == "ID expired; Statement unreadable"
    assert report.flags == ()
    assert report.detail["type"] == "business"

    silent = blaaiz.add("biz_2", "REJECTED", type="business",
                        owners=[{"id": "own_3", "status": "APPROVED", "admin_comments": None}],
                        documents=[{"id": "doc_2", "status": "REJECTED", "admin_comments": ""}])
    report = await blaaiz.fetch(silent)
    assert report.signal.trigger == Trigger.PROVIDER_REJECTED
    assert report.signal.comment is None
    assert report.flags == ("rejected_without_comments",)

    individual = await blaaiz.fetch(blaaiz.add("cus_1", "REJECTED"))
    assert individual.flags == ()  # only a business without comments is a case for support


@pytest.mark.parametrize(("raw", "outcome", "trigger", "comment"), [
    ("pending_step_up", None, Trigger.PROVIDER_REQUESTED_MORE, None),
    ("pending_documents", None, Trigger.PROVIDER_REQUESTED_MORE, None),
    ("data_request", None, Trigger.PROVIDER_REQUESTED_MORE, None),
    ("waiting_review", None, Trigger.PROVIDER_REVIEWING, None),
    ("pending_journey_application_review", None, Trigger.PROVIDER_REVIEWING, None),
    ("running", None, Trigger.PROVIDER_REVIEWING, None),
    ("completed", "Approved", Trigger.PROVIDER_APPROVED, None),
    ("completed", "approved", Trigger.PROVIDER_APPROVED, None),
    ("completed", "APPROVED", Trigger.PROVIDER_APPROVED, None),
    ("completed", "Denied", Trigger.PROVIDER_REJECTED, "Denied"),
    ("completed", "declined", Trigger.PROVIDER_REJECTED, "declined"),
    ("Running", None, Trigger.PROVIDER_REVIEWING, None),
])
async def test_connectfi_maps_every_documented_status(cfi: Rig, raw: str, outcome: str | None,
                                                      trigger: Trigger, comment: str | None) -> None:
    ref = cfi.add("cust_1", raw, outcome=outcome)
    report = await cfi.fetch(ref)
    assert report.unknown is False
    assert report.provider_customer_id == "cust_1"
    assert report.detail["application_id"] == "app_cust_1"
    assert report.signal.trigger == trigger
    assert report.signal.source == Source.POLL
    assert report.signal.comment == comment
    expected_raw = raw.lower() if outcome is None else f"completed:{outcome}"
    assert report.provider_status == expected_raw


@pytest.mark.parametrize("outcome", [None, "", "  "])
async def test_connectfi_completed_without_an_outcome_is_flagged_not_decided(cfi: Rig, outcome: str | None) -> None:
    report = await cfi.fetch(cfi.add("cust_1", "completed", outcome=outcome))
    assert report.unknown is True
    assert report.signal.trigger is None
    assert report.provider_status == "completed:"


@pytest.mark.parametrize(("raw", "trigger"), [
    ("valid", Trigger.PROVIDER_APPROVED),
    ("fail", Trigger.PROVIDER_REJECTED),
    ("processing", Trigger.PROVIDER_REVIEWING),
    ("unused", None),
])
async def test_cryptopocket_maps_every_documented_status(cp: Rig, raw: str, trigger: Trigger | None) -> None:
    report = await cp.fetch(cp.add("usr_1", raw))
    assert (report.provider_customer_id, report.provider_status, report.unknown) == ("usr_1", raw, False)
    assert report.signal.trigger == trigger
    assert report.signal.source == Source.POLL


async def test_an_unknown_status_is_kept_raw_and_moves_nothing(rig: Rig) -> None:
    raw = {"blaaiz": "ON_HOLD", "connectfi": "compliance_hold", "cryptopocket": "on_hold"}[rig.name]
    report = await rig.fetch(rig.add("c_1", raw))
    assert report.unknown is True
    assert report.signal.trigger is None
    assert report.provider_status == raw
    assert report.signal.provider_status == raw
    known = await rig.fetch(rig.add("c_2", record_status(rig.name)))
    assert known.unknown is False


# ------------------------------------------------------------------------------------------- tokens


async def test_many_fetches_share_one_token(rig: Rig) -> None:
    refs = [rig.add(f"c_{i}", record_status(rig.name)) for i in range(10)]
    reports = await asyncio.gather(*(rig.fetch(ref) for ref in refs))  # cold start: concurrent callers share one fetch
    assert [r.provider_customer_id for r in reports] == [r.provider_customer_id for r in refs]
    assert rig.tokens() == 1
    for ref in refs * 2:
        assert (await rig.fetch(ref)).unknown is False
    assert rig.tokens() == 1
    assert rig.adapter.tokens.fetches == 1
    assert rig.data_calls() == 30


async def test_blaaiz_token_is_renewed_before_it_expires(blaaiz: Rig) -> None:
    ref = blaaiz.add("cus_1", "PROCESSING")
    await blaaiz.fetch(ref)
    blaaiz.clock.advance(timedelta(seconds=800))
    await blaaiz.fetch(ref)
    assert blaaiz.tokens() == 1  # still well inside the 900 s
    blaaiz.clock.advance(timedelta(seconds=50))  # 850 s: inside the renewal margin, before the provider's expiry
    await blaaiz.fetch(ref)
    assert blaaiz.tokens() == 2
    assert blaaiz.sim.count(status=401) == 0
    assert blaaiz.data_calls() == 3
    blaaiz.clock.advance(timedelta(seconds=100))  # past the first token's 900 s: the new one is used
    await blaaiz.fetch(ref)
    assert (blaaiz.tokens(), blaaiz.sim.count(status=401)) == (2, 0)


async def test_connectfi_token_is_renewed_before_dts_expire_at(cfi: Rig) -> None:
    ref = cfi.add("cust_1", "running")
    await cfi.fetch(ref)
    cfi.clock.advance(timedelta(seconds=1700))
    await cfi.fetch(ref)
    assert cfi.tokens() == 1
    cfi.clock.advance(timedelta(seconds=50))  # 1750 s of the simulator's 1800 s
    await cfi.fetch(ref)
    assert (cfi.tokens(), cfi.sim.count(status=401)) == (2, 0)


async def test_cryptopocket_undocumented_lifetime_costs_one_refusal(cp: Rig) -> None:
    cp.sim.token_lifetime = 600  # shorter than the adapter's guess: the provider refuses first
    ref = cp.add("usr_1", "processing")
    await cp.fetch(ref)
    cp.clock.advance(timedelta(seconds=700))
    report = await cp.fetch(ref)
    assert report.signal.trigger == Trigger.PROVIDER_REVIEWING
    assert (cp.tokens(), cp.data_calls()) == (2, 3)


async def test_token_expiry_mid_run_costs_one_reauth_and_one_retry(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    await rig.fetch(ref)
    assert (rig.tokens(), rig.data_calls()) == (1, 1)
    rig.sim.expire_tokens()
    report = await rig.fetch(ref)
    assert report.provider_customer_id == "c_1"
    assert report.unknown is False
    assert (rig.tokens(), rig.data_calls()) == (2, 3)
    if rig.name != "cryptopocket":  # CryptoPocket refuses with HTTP 200
        assert rig.sim.count(rig.data_path, status=401) == 1
    await rig.fetch(ref)
    assert (rig.tokens(), rig.data_calls()) == (2, 4)  # the new token is kept


@pytest.mark.parametrize("how", ["refusal", "born_expired"])
async def test_a_refused_fresh_token_is_an_auth_error_not_a_loop(rig: Rig, how: str) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    if how == "refusal":
        status, body = rig.refusal
        rig.sim.fail(times=5, status=status, body=body, path=rig.data_path)
    else:
        rig.sim.token_lifetime = 0  # every token is dead on arrival
    error = await rig.error(ref)
    assert error.kind == "auth"
    assert not error.retryable
    assert (rig.tokens(), rig.data_calls()) == (2, 2)
    if rig.name == "cryptopocket":
        assert error.code == "authorization_incorrect"


async def test_bad_credentials_are_an_auth_error_naming_the_problem(rig: Rig) -> None:
    adapter = make_adapter(rig.name, rig.sim, rig.http, rig.clock, secret="wrong-secret")
    ref = rig.add("c_1", record_status(rig.name))
    with pytest.raises(ProviderError) as caught:
        await adapter.fetch_status(ref)
    error = caught.value
    assert error.kind == "auth"
    expected = {"blaaiz": "Invalid client credentials", "connectfi": "Invalid login or password",
                "cryptopocket": "authorization_incorrect"}[rig.name]
    assert expected in str(error)
    assert "wrong-secret" not in str(error)
    assert (rig.tokens(), rig.data_calls()) == (1, 0)  # no retry on bad credentials, no data call


async def test_token_cache_renews_a_tenth_early_for_short_tokens(clock: FakeClock) -> None:
    fetched: list[int] = []

    async def fetch() -> tuple[str, datetime]:
        fetched.append(1)
        return f"t{len(fetched)}", clock.now() + timedelta(seconds=100)

    cache = TokenCache(clock, fetch)
    assert await cache.get() == "t1"
    clock.advance(timedelta(seconds=89))
    assert await cache.get() == "t1"
    clock.advance(timedelta(seconds=1))  # 90 s: a tenth of 100 s before expiry
    assert await cache.get() == "t2"
    cache.invalidate("t1")  # an older token refused late does not drop the newer one
    assert await cache.get() == "t2"
    cache.invalidate("t2")
    assert await cache.get() == "t3"


# ------------------------------------------------------------------------------------------- errors


async def test_unknown_customer_is_not_found(rig: Rig) -> None:
    error = await rig.error(rig.unknown)
    assert error.kind == "not_found"
    assert not error.retryable
    assert rig.data_calls() == 1
    if rig.name == "blaaiz":
        assert error.status_code == 404
        assert "Customer not found" in error.message
    elif rig.name == "connectfi":
        assert (error.status_code, error.code) == (404, "applicationNotFound")
    else:
        assert (error.status_code, error.code) == (200, "user_not_found")  # the HTTP-200 error envelope


async def test_server_error_is_unavailable_and_retryable(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.fail(status=500, path=rig.data_path)
    error = await rig.error(ref)
    assert (error.kind, error.status_code, error.retryable) == ("unavailable", 500, True)
    assert rig.data_calls() == 1  # the adapter does not retry on its own: the poller decides
    assert (await rig.fetch(ref)).provider_customer_id == "c_1"


async def test_gateway_error_page_that_is_not_json_is_still_unavailable(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.fail(status=502, body="<html><body>502 Bad Gateway</body></html>", path=rig.data_path)
    error = await rig.error(ref)
    assert (error.kind, error.status_code, error.retryable) == ("unavailable", 502, True)


async def test_success_that_is_not_json_is_unexpected(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.fail(status=200, body="<html>maintenance</html>", path=rig.data_path)
    error = await rig.error(ref)
    assert (error.kind, error.status_code) == ("unexpected", 200)
    assert "not JSON" in error.message
    assert not error.retryable


async def test_success_json_that_is_not_an_object_is_unexpected(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.fail(status=200, body=["not", "an", "object"], path=rig.data_path)
    error = await rig.error(ref)
    assert error.kind == "unexpected"
    assert not error.retryable


async def test_429_with_retry_after_in_seconds(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.throttle(retry_after="7", path=rig.data_path)
    error = await rig.error(ref)
    assert (error.kind, error.status_code, error.retry_after, error.retryable) == ("rate_limited", 429, 7.0, True)


async def test_429_with_retry_after_as_an_http_date(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.throttle(retry_after=rig.sim.retry_at(30), path=rig.data_path)
    error = await rig.error(ref)
    assert error.kind == "rate_limited"
    assert error.retry_after == pytest.approx(30, abs=1)
    rig.clock.advance(timedelta(seconds=10))
    rig.sim.throttle(retry_after=rig.clock.now() + timedelta(seconds=45), path=rig.data_path)  # sent as a date
    assert (await rig.error(ref)).retry_after == pytest.approx(45, abs=1)


async def test_429_without_retry_after(rig: Rig) -> None:
    ref = rig.add("c_1", record_status(rig.name))
    rig.sim.throttle(retry_after=None, path=rig.data_path)
    error = await rig.error(ref)
    assert (error.kind, error.retry_after) == ("rate_limited", None)


async def test_blaaiz_own_rate_limit_and_headers(blaaiz: Rig) -> None:
    blaaiz.sim.limits = [(2, 60)]
    ref = blaaiz.add("cus_1", "PENDING")
    await blaaiz.fetch(ref)
    assert blaaiz.adapter.rate_limit["x-ratelimit-remaining"] == "1"
    await blaaiz.fetch(ref)
    blaaiz.clock.advance(timedelta(seconds=15))
    error = await blaaiz.error(ref)
    assert (error.kind, error.retry_after) == ("rate_limited", 45.0)
    assert blaaiz.adapter.rate_limit["x-ratelimit-remaining"] == "0"
    blaaiz.clock.advance(timedelta(seconds=45))
    assert (await blaaiz.fetch(ref)).provider_status == "PENDING"


@pytest.mark.parametrize("where", ["data", "token"])
async def test_a_hang_longer_than_the_client_timeout_is_a_timeout(rig: Rig, where: str) -> None:
    async with httpx.AsyncClient(transport=rig.sim.transport(), timeout=SHORT_TIMEOUT) as http:
        adapter = make_adapter(rig.name, rig.sim, http, rig.clock)
        ref = rig.add("c_1", record_status(rig.name))
        rig.sim.hang(seconds=5, path=rig.data_path if where == "data" else rig.token_path)
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProviderError) as caught:
            await adapter.fetch_status(ref)
        assert asyncio.get_running_loop().time() - started < 2
        assert (caught.value.kind, caught.value.retryable) == ("timeout", True)
        assert rig.sim.count(status=499) == 1  # the simulator saw the client go away
        assert (await adapter.fetch_status(ref)).provider_customer_id == "c_1"


async def test_unreachable_provider_is_unavailable(rig: Rig) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        adapter = make_adapter(rig.name, rig.sim, http, rig.clock)
        with pytest.raises(ProviderError) as caught:
            await adapter.fetch_status(rig.add("c_1", record_status(rig.name)))
    assert (caught.value.kind, caught.value.retryable) == ("unavailable", True)


async def test_blaaiz_token_without_scope_is_forbidden(blaaiz: Rig) -> None:
    class NoScope(BlaaizAdapter):
        scope = ""  # Blaaiz: no scope -> every call 403

    adapter = NoScope(blaaiz.http, blaaiz.clock, blaaiz.sim.default_base_url, blaaiz.sim.client_id,  # type: ignore[attr-defined]
                      blaaiz.sim.client_secret)  # type: ignore[attr-defined]
    with pytest.raises(ProviderError) as caught:
        await adapter.fetch_status(blaaiz.add("cus_1", "PENDING"))
    assert (caught.value.kind, caught.value.status_code) == ("forbidden", 403)
    assert "customer:read" in caught.value.message
    assert blaaiz.tokens() == 1  # a 403 is not a token problem: no re-authentication


async def test_blaaiz_asks_for_the_customer_read_scope(blaaiz: Rig) -> None:
    await blaaiz.fetch(blaaiz.add("cus_1", "PENDING"))
    issued = list(blaaiz.sim._tokens.values())
    assert [set(token.scopes) for token in issued] == [{"customer:read"}]


async def test_blaaiz_http_200_with_status_false_is_an_error(blaaiz: Rig) -> None:
    ref = blaaiz.add("cus_1", "VERIFIED")
    blaaiz.sim.fail(status=200, body={"status": False, "message": "Customer record is locked"},
                    path=blaaiz.data_path)
    error = await blaaiz.error(ref)
    assert (error.kind, error.status_code) == ("unexpected", 200)
    assert "Customer record is locked" in error.message


async def test_connectfi_http_200_error_envelopes(cfi: Rig) -> None:
    ref = cfi.add("cust_1", "running")
    cfi.sim.fail(status=200, body={"requestId": "r", "code": "applicationNotFound", "message": "Application not found"},
                 path="/akepa/status")
    error = await cfi.error(ref)
    assert (error.kind, error.code, error.status_code) == ("not_found", "applicationNotFound", 200)
    cfi.sim.fail(status=200, body={"requestId": "r", "code": "statusApplicationEntity", "message": "bad state"},
                 path="/akepa/status")
    assert (await cfi.error(ref)).kind == "invalid"


async def test_connectfi_application_of_another_customer_is_not_found(cfi: Rig) -> None:
    cfi.add("cust_1", "running")
    error = await cfi.error(CustomerRef("cust_2", application_id="app_cust_1"))
    assert (error.kind, error.code) == ("not_found", "applicationNotFound")


async def test_connectfi_without_application_id_is_invalid(cfi: Rig) -> None:
    error = await cfi.error(CustomerRef("cust_1"))
    assert error.kind == "invalid"
    assert "application_id" in error.message
    assert cfi.sim.count() == 0  # refused before any call


async def test_cryptopocket_user_errors(cp: Rig) -> None:
    cp.sim.unknown_user_http_status = 404  # type: ignore[attr-defined]
    error = await cp.error(cp.unknown)
    assert (error.kind, error.status_code, error.code) == ("not_found", 404, "user_not_found")
    cp.add("usr_1", "processing")
    cp.sim.forbid("usr_1")  # type: ignore[attr-defined]
    error = await cp.error(CustomerRef("usr_1"))
    assert (error.kind, error.status_code, error.code) == ("forbidden", 403, "user_not_in_integration")
    assert cp.tokens() == 1  # neither is a token problem


@pytest.mark.parametrize("base", ["http://cryptopocket.sim/api", "http://cryptopocket.sim/api/",
                                  "http://cryptopocket.sim", "http://cryptopocket.sim/"])
async def test_cryptopocket_base_url_with_or_without_api(cp: Rig, base: str) -> None:
    adapter = make_adapter("cryptopocket", cp.sim, cp.http, cp.clock, base_url=base)
    report = await adapter.fetch_status(cp.add("usr_1", "valid"))
    assert report.signal.trigger == Trigger.PROVIDER_APPROVED
    assert [(r.method, r.path) for r in cp.sim.requests] == [("POST", "/api/authenticate"), ("GET", "/api/kyc/check")]
    assert cp.sim.count("/api/api") == 0


# ------------------------------------------------------------------------------------------ Blaaiz list


async def test_blaaiz_list_page_paginates(blaaiz: Rig) -> None:
    for i in range(40):
        blaaiz.add(f"cus_{i:02d}", "PENDING")
        blaaiz.clock.advance(timedelta(seconds=1))
    blaaiz.add("cus_busy", "PROCESSING")
    blaaiz.add("biz_1", "PENDING", type="business")
    pages = []
    page, more = 1, True
    while more:
        reports, more = await blaaiz.adapter.list_page("PENDING", "individual", page)
        pages.append((len(reports), more))
        assert all(r.provider_status == "PENDING" and r.signal.trigger is None for r in reports)
        if page == 1:
            assert reports[0].provider_customer_id == "cus_39"  # newest first
        page += 1
        assert page <= 4, "list_page never said there were no more pages"
    assert pages == [(15, True), (15, True), (10, False)]
    assert blaaiz.sim.count("/api/external/customer") == 3
    assert blaaiz.tokens() == 1
    empty, more = await blaaiz.adapter.list_page("VERIFIED", "individual", 1)
    assert (empty, more) == ([], False)


# ------------------------------------------------------------------------------------ connectFi callback


async def test_connectfi_callback_parses_to_the_right_signal(cfi: Rig) -> None:
    sim: Any = cfi.sim
    cfi.add("cust_1", "waiting_review")
    body = sim.callback("app_cust_1")
    event = connectfi.parse(json.loads(body))
    assert (event.provider, event.provider_customer_id, event.event_id) == ("connectfi", "cust_1", None)
    assert event.signal is not None
    assert (event.signal.trigger, event.signal.source) == (Trigger.PROVIDER_REVIEWING, Source.WEBHOOK)
    assert not event.unknown_status

    sim.set_status("app_cust_1", "completed", outcome="Denied")
    event = connectfi.parse(json.loads(sim.callback("app_cust_1")))
    assert event.signal is not None
    assert (event.signal.trigger, event.signal.comment) == (Trigger.PROVIDER_REJECTED, "Denied")
    sim.set_status("app_cust_1", "completed", outcome="Approved")
    event = connectfi.parse(json.loads(sim.callback("app_cust_1")))
    assert event.signal is not None
    assert event.signal.trigger == Trigger.PROVIDER_APPROVED

    event = connectfi.parse(json.loads(sim.callback("app_cust_1", status="compliance_hold", outcome=None)))
    assert event.unknown_status
    assert event.signal is not None
    assert event.signal.trigger is None


async def test_connectfi_callback_fingerprint_is_applicationid_status_outcome(cfi: Rig) -> None:
    sim: Any = cfi.sim
    cfi.add("cust_1", "completed", outcome="Approved")
    cfi.add("cust_2", "completed", outcome="Approved")

    def print_of(application_id: str, **extra: Any) -> str:
        return connectfi.parse(json.loads(sim.callback(application_id, **extra))).fingerprint

    first = print_of("app_cust_1")
    assert json.loads(sim.callback("app_cust_1"))["requestId"] != json.loads(sim.callback("app_cust_1"))["requestId"]
    assert print_of("app_cust_1") == first  # a new requestId is still the same event
    assert print_of("app_cust_1", reference="other", aggregatorId="agg_2") == first
    assert print_of("app_cust_1", outcome="Denied") != first
    assert print_of("app_cust_1", status="running", outcome=None) != first
    assert print_of("app_cust_2") != first


@pytest.mark.parametrize("payload", [[], {"code": "0"}, {"data": {"applicationId": "a", "status": "running"}},
                                     {"data": {"customerId": "c", "status": "running"}},
                                     {"data": {"customerId": "c", "applicationId": "a"}}])
async def test_connectfi_callback_missing_fields_are_parse_errors(payload: Any) -> None:
    from tracker.domain.events import ParseError

    with pytest.raises(ParseError):
        connectfi.parse(payload)


# --------------------------------------------------------------------------------- CryptoPocket webhook


def cp_sim(clock: FakeClock) -> CryptoPocketSimulator:
    return CryptoPocketSimulator(clock=clock, api_key="pk_test", api_secret="sk_test")


@pytest.mark.parametrize("encoding", ["hex", "base64"])
@pytest.mark.parametrize("as_request", [True, False])
def test_cryptopocket_verify_accepts_hex_and_base64(clock: FakeClock, encoding: Literal["hex", "base64"],
                                                    as_request: bool) -> None:
    sim = cp_sim(clock)
    body, headers = sim.webhook("usr_1", "valid", encoding=encoding)
    given: Any = httpx.Headers(headers) if as_request else headers  # as received, and as the simulator spells them
    cryptopocket.verify(given, body, "pk_test", "sk_test", clock.now())
    clock.advance(timedelta(minutes=4))  # still inside the window
    cryptopocket.verify(given, body, "pk_test", "sk_test", clock.now())


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_cryptopocket_verify_refuses_what_it_should(clock: FakeClock, encoding: Literal["hex", "base64"]) -> None:
    sim = cp_sim(clock)
    body, headers = sim.webhook("usr_1", "valid", encoding=encoding)
    now = clock.now()

    def refused(h: dict[str, str], b: bytes = body, key: str | None = "pk_test", secret: str | None = "sk_test",
                at: datetime = now) -> str:
        with pytest.raises(cryptopocket.SignatureError) as caught:
            cryptopocket.verify(httpx.Headers(h), b, key, secret, at)
        return str(caught.value)

    assert "signature" in refused(headers, body.replace(b"valid", b"fail_"))
    assert "signature" in refused(headers, body + b" ")
    assert "X-API-Key" in refused({**headers, "X-API-Key": "pk_other"})
    assert "X-API-Key" in refused(headers, key="pk_other")
    assert "signature" in refused(headers, secret="sk_other")
    for name in ("X-API-Key", "X-Signature", "X-Timestamp"):
        assert name in refused({k: v for k, v in headers.items() if k != name})
    assert "5 minutes" in refused(headers, at=now + timedelta(minutes=6))
    stale_body, stale = sim.webhook("usr_1", "valid", encoding=encoding,
                                    timestamp=int((now - timedelta(minutes=6)).timestamp()))
    assert "5 minutes" in refused(stale, stale_body)
    future_body, future = sim.webhook("usr_1", "valid", encoding=encoding,
                                      timestamp=int((now + timedelta(minutes=6)).timestamp()))
    assert "5 minutes" in refused(future, future_body)
    assert "not unix seconds" in refused({**headers, "X-Timestamp": "yesterday"})
    assert "API_KEY" in refused(headers, key=None)


def test_cryptopocket_webhook_parses_to_the_right_signal(clock: FakeClock) -> None:
    sim = cp_sim(clock)
    expected = {"valid": Trigger.PROVIDER_APPROVED, "fail": Trigger.PROVIDER_REJECTED,
                "processing": Trigger.PROVIDER_REVIEWING, "unused": None}
    prints = set()
    for status, trigger in expected.items():
        body, _ = sim.webhook("usr_1", status)
        event = cryptopocket.parse(json.loads(body))
        assert (event.provider, event.provider_customer_id, event.event_type) == ("cryptopocket", "usr_1",
                                                                                  "kyc.status_changed")
        assert event.signal is not None
        assert (event.signal.trigger, event.signal.source, event.signal.provider_status) == (
            trigger, Source.WEBHOOK, status)
        assert event.signal.provider_time == clock.now().replace(microsecond=0)
        assert not event.unknown_status
        prints.add(event.fingerprint)
    assert len(prints) == 4
    body, _ = sim.webhook("usr_1", "valid")
    assert cryptopocket.parse(json.loads(body)).fingerprint in prints  # the same delivery again
    unknown = cryptopocket.parse(json.loads(sim.webhook("usr_1", "on_hold")[0]))
    assert unknown.unknown_status
    assert unknown.signal is not None
    assert (unknown.signal.trigger, unknown.signal.provider_status) == (None, "on_hold")


# ------------------------------------------------------------------------------------------ Retry-After


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("-3", 0.0),
    ("Mon, 05 Jan 2026 09:00:30 GMT", 30.0),  # IMF-fixdate
    ("Monday, 05-Jan-26 09:00:30 GMT", 30.0),  # obsolete RFC 850 form
    ("Mon Jan  5 09:00:30 2026", 30.0),  # obsolete asctime form: no zone, and GMT by definition
    ("Mon, 05 Jan 2026 08:59:00 GMT", 0.0),  # in the past
    (None, None), ("", None), ("soon", None), ("inf", None), ("nan", None),
])
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert retry_after_seconds(value, now) == seconds
