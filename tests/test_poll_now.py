"""Poll-now: POST /v1/customers/{id}/poll and ``tracker customers poll ID`` ask the provider at once and apply
its answer by the poller's own path (claim, budget, plan, write), on a fake clock against the simulators."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import httpx
from sqlalchemy import select

from tests.conftest import free_port, make_settings
from tests.simulated import key, registered
from tests.test_cli import run
from tracker.bootstrap import build
from tracker.db.engine import write_transaction
from tracker.db.tables import customers, history


async def test_poll_now_applies_the_providers_answer_with_the_operator_as_actor(api, polled, clock, simulators) -> None:
    simulators["cryptopocket"].add_customer("usr_now", "processing")
    customer = await registered(api, polled, "cryptopocket", "usr_now")
    admin = key(polled, "admin")
    first = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert first.status_code == 200, first.text
    assert first.json()["poll"] == {"outcome": "changed", "provider_status": "processing", "error": None}
    assert first.json()["customer"]["state"] == "pending"
    assert first.json()["customer"]["last_polled_at"] == clock.now().isoformat().replace("+00:00", "Z")

    clock.advance(timedelta(minutes=1))  # long before its next scheduled poll
    simulators["cryptopocket"].set_status("usr_now", "valid")
    second = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert second.json()["poll"]["outcome"] == "changed"
    assert second.json()["customer"]["state"] == "verified"
    third = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert third.json()["poll"] == {"outcome": "unchanged", "provider_status": "valid", "error": None}
    with polled.engine.connect() as conn:
        moves = conn.execute(select(history.c.to_state, history.c.source, history.c.actor)
                             .where(history.c.customer_id == customer["id"]).order_by(history.c.id)).all()
    assert (moves[-1].to_state, moves[-1].source) == ("verified", "poll")
    assert moves[-1].actor.startswith("operator:poll-admin-")  # the key's name
    assert simulators["cryptopocket"].stats()["total_requests"] >= 3


async def test_a_failed_poll_shows_on_the_customer_until_one_succeeds(api, polled, clock, simulators) -> None:
    customer = await registered(api, polled, "cryptopocket", "usr_gone")
    simulators["cryptopocket"].forbid("usr_gone")
    admin = key(polled, "admin")
    failed = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert failed.status_code == 200, failed.text
    assert failed.json()["poll"]["outcome"] == "failed"
    assert failed.json()["poll"]["error"].startswith(failed.json()["customer"]["last_poll_error"][:10])
    assert failed.json()["customer"]["next_poll_at"] > failed.json()["customer"]["last_polled_at"]
    got = await api.get(f"/v1/customers/{customer['id']}", headers=admin)
    assert got.json()["last_poll_error"] == failed.json()["poll"]["error"]

    simulators["cryptopocket"].forbidden.discard("usr_gone")
    simulators["cryptopocket"].add_customer("usr_gone", "processing")
    clock.advance(timedelta(seconds=5))
    recovered = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert recovered.json()["poll"]["outcome"] == "changed"
    assert recovered.json()["customer"]["last_poll_error"] is None


async def test_the_etag_follows_a_poll_that_moves_nothing(api, polled, clock, simulators) -> None:
    simulators["cryptopocket"].add_customer("usr_etag", "unused")
    customer = await registered(api, polled, "cryptopocket", "usr_etag")
    admin = key(polled, "admin")
    await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)  # its first status is stored
    before = await api.get(f"/v1/customers/{customer['id']}", headers=admin)
    clock.advance(timedelta(seconds=30))
    polled = await api.post(f"/v1/customers/{customer['id']}/poll", headers=admin)
    assert polled.json()["poll"]["outcome"] == "unchanged"
    assert polled.json()["customer"]["version"] == before.json()["version"]
    again = await api.get(f"/v1/customers/{customer['id']}", headers={**admin, "if-none-match": before.headers["etag"]})
    assert again.status_code == 200  # the record now says when it was polled: a 304 would hide that
    assert again.json()["last_polled_at"] > before.json()["last_polled_at"]
    assert again.headers["etag"] == polled.headers["etag"]
    unchanged = await api.get(f"/v1/customers/{customer['id']}",
                              headers={**admin, "if-none-match": again.headers["etag"]})
    assert unchanged.status_code == 304


async def test_poll_now_refusals_name_the_reason_and_poll_nothing(api, polled, clock, simulators) -> None:
    admin = key(polled, "admin")
    unpolled = await registered(api, polled, "blaaiz", "cus_no_credentials")
    response = await api.post(f"/v1/customers/{unpolled['id']}/poll", headers=admin)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "provider_not_polled")
    assert "credentials" in response.json()["error"]["message"]

    missing = await api.post("/v1/customers/999999/poll", headers=admin)
    assert missing.status_code == 404
    huge = await api.post("/v1/customers/99999999999999999999999/poll", headers=admin)
    assert huge.status_code == 404

    simulators["cryptopocket"].add_customer("usr_busy", "processing")
    busy = await registered(api, polled, "cryptopocket", "usr_busy")
    assert (await api.post(f"/v1/customers/{busy['id']}/poll", headers=key(polled, "write"))).status_code == 403
    assert (await api.post(f"/v1/customers/{busy['id']}/poll")).status_code == 401
    with write_transaction(polled.engine) as conn:  # another worker's poll of it is in flight
        conn.execute(customers.update().where(customers.c.id == busy["id"])
                     .values(poll_lease_owner="other-worker", poll_lease_until=clock.now() + timedelta(seconds=60)))
    held = await api.post(f"/v1/customers/{busy['id']}/poll", headers=admin)
    assert (held.status_code, held.json()["error"]["code"]) == (409, "poll_in_progress")
    assert simulators["cryptopocket"].stats()["total_requests"] == 0


async def test_poll_now_waits_for_the_providers_retry_after(api, polled, clock, simulators) -> None:
    simulators["cryptopocket"].add_customer("usr_held", "processing")
    customer = await registered(api, polled, "cryptopocket", "usr_held")
    from tracker.db import queries

    with write_transaction(polled.engine) as conn:
        queries.lock_provider_state(conn, "cryptopocket")
        queries.update_provider_state(conn, "cryptopocket", {"blocked_until": clock.now() + timedelta(minutes=2)})
    response = await api.post(f"/v1/customers/{customer['id']}/poll", headers=key(polled, "admin"))
    assert (response.status_code, response.json()["error"]["code"]) == (503, "provider_busy")
    assert "asked not to be called before" in response.json()["error"]["message"]
    assert simulators["cryptopocket"].stats()["total_requests"] == 0
    with polled.engine.connect() as conn:  # the claim is given back: the scheduled poll is not held up
        lease = conn.execute(select(customers.c.poll_lease_owner).where(customers.c.id == customer["id"])).scalar()
    assert lease is None


def test_the_cli_polls_a_customer_against_a_simulator_over_http(database_url: str) -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "tracker.providers.simulators", "cryptopocket", "--port", str(port),
                            "--no-rate-limit"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{base}/_sim/records", json={"id": "usr_cli", "status": "fail"}).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
        env = {"TRACKER_CRYPTOPOCKET_BASE_URL": f"{base}/api", "TRACKER_CRYPTOPOCKET_API_KEY": "sim-cryptopocket-key",
               "TRACKER_CRYPTOPOCKET_API_SECRET": "sim-cryptopocket-secret"}
        settings = make_settings(database_url)
        container = build(settings)
        try:
            from tracker.db import migrate

            migrate.upgrade(container.engine)
            created = container.customers.register({"provider": "cryptopocket", "provider_customer_id": "usr_cli",
                                                    "customer_type": "individual"})
        finally:
            container.engine.dispose()
        result = run(["customers", "poll", str(created.row.id), "--by", "ops-anna"], database_url, **env)
        assert result.returncode == 0, result.stderr
        assert f"poll of customer {created.row.id} (cryptopocket usr_cli): changed" in result.stdout
        assert "it is rejected" in result.stdout
        missing = run(["customers", "poll", "424242"], database_url, **env)
        assert missing.returncode == 1
        assert "no customer with id 424242" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        sim.terminate()
        sim.wait(timeout=30)
