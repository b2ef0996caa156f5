"""The HTML dashboard over HTTP (no browser): signing in and out, the session cookie's attributes, what pages
and actions refuse (no key, another site, a read key, bad input), and what the pages and actions show and do.
The browser's view is tests/test_dashboard_browser.py."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.conftest import blaaiz_event, post_blaaiz
from tests.dashboard_seed import seed
from tracker import alerts
from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.db.tables import notifications
from tracker.web.app import create_app
from tracker.web.requests import SESSION_COOKIE

SAME = {"origin": "http://tracker.test"}
PAGES = ("/", "/stuck", "/alerts", "/events")


def keys(container: Container) -> dict[str, str]:
    return {scope: container.api_keys.create(f"dash-{scope}", scope) for scope in ("read", "admin")}


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/sign-in", data={"key": key}, headers=SAME)


def text_of(response: httpx.Response) -> str:
    """The page's text without its tags, spaces folded (what a reader sees)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", response.text)))


@pytest.fixture
def seeded(container: Container, clock: FakeClock) -> Any:
    return seed(container, clock)


async def test_every_page_sends_a_reader_without_a_key_to_sign_in(client) -> None:
    for path in (*PAGES, "/customers/1", "/stuck?provider=blaaiz"):
        response = await client.get(path)
        assert response.status_code == 303, path
        location = response.headers["location"]
        assert location.startswith("/sign-in"), location
        if path != "/":
            assert httpx.URL(location).params["next"] == path


async def test_signing_in_keeps_the_key_in_a_session_cookie_only(client, container) -> None:
    admin = keys(container)["admin"]
    response = await client.post("/sign-in", data={"key": admin, "next": "/stuck"}, headers=SAME)
    assert response.status_code == 303
    assert response.headers["location"] == "/stuck"
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith(f"{SESSION_COOKIE}={admin};")
    assert {"httponly", "path", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert not attributes & {"max-age", "expires", "secure"}  # a browser-session cookie; http here
    page = await client.get("/")
    assert page.status_code == 200
    assert admin not in page.text  # never in a page
    assert "Signed in as dash-admin (admin)" in text_of(page)
    for header in ("content-security-policy", "x-frame-options", "cache-control"):
        assert header in page.headers
    assert page.headers["cache-control"] == "no-store"


async def test_the_cookie_is_secure_over_https(container) -> None:
    admin = keys(container)["admin"]
    app = create_app(container)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://tracker.test") as http:
        response = await http.post("/sign-in", data={"key": admin}, headers={"origin": "https://tracker.test"})
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()


async def test_a_wrong_or_missing_key_is_refused_on_the_sign_in_page(client, container) -> None:
    admin = keys(container)["admin"]
    for key, words in ((admin[:-2] + "xx", "That API key is not valid"), ("", "Enter an API key"),
                       ("trk_" + "a" * 300, "That API key is not valid")):
        response = await sign_in(client, key)
        assert response.status_code == 401
        assert words in text_of(response)
        assert "set-cookie" not in response.headers
    assert (await client.get("/")).status_code == 303


async def test_a_revoked_key_ends_the_session(client, container) -> None:
    admin = keys(container)["admin"]
    await sign_in(client, admin)
    assert (await client.get("/")).status_code == 200
    container.api_keys.revoke("dash-admin")
    response = await client.get("/")
    assert response.status_code == 303
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]  # the stale cookie is cleared


async def test_signing_out_clears_the_cookie(client, container) -> None:
    await sign_in(client, keys(container)["read"])
    response = await client.post("/sign-out", headers=SAME)
    assert response.status_code == 303
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert (await client.get("/")).status_code == 303
    assert "You are signed out." in text_of(await client.get(response.headers["location"]))


@pytest.mark.parametrize("headers", [{"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                                     {"sec-fetch-site": "same-site", "origin": "http://tracker.test"}, {}])
async def test_posts_from_another_site_are_refused(client, container, seeded, headers) -> None:
    admin = keys(container)["admin"]
    assert (await client.post("/sign-in", data={"key": admin}, headers=headers)).status_code == 403
    await sign_in(client, admin)
    response = await client.post("/alerts/1/acknowledge", headers=headers)
    assert response.status_code == 403
    assert "from the dashboard's own pages" in text_of(response)
    page = await client.get(f"/customers/{seeded['cus_1001']}")
    assert "acknowledged" not in page.text.split('id="h-alerts"')[1].split("</table>")[0]


async def test_a_read_key_may_look_but_not_act(client, container, seeded) -> None:
    await sign_in(client, keys(container)["read"])
    customer = seeded["cus_1001"]
    page = await client.get(f"/customers/{customer}")
    assert page.status_code == 200
    assert re.findall(r'<form method="post" action="([^"]+)"', page.text) == ["/sign-out"]  # no action offered
    for path, data in (("/alerts/1/acknowledge", {}), (f"/customers/{customer}/poll", {}),
                       (f"/customers/{customer}/state", {"state": "verified", "reason": "x"}),
                       ("/events/1/replay", {}), ("/stuck/acknowledge", {"customer": str(customer)})):
        response = await client.post(path, data=data, headers=SAME)
        assert response.status_code == 403, path
        assert "has scope read; this action needs an admin key" in text_of(response)
    assert "state: pending" not in text_of(page)
    assert "pending 5 h 12 min at Blaaiz" in text_of(await client.get(f"/customers/{customer}"))


async def test_the_stuck_list_is_the_longest_pending_first_with_words_beside_colours(client, container,
                                                                                     seeded) -> None:
    await sign_in(client, keys(container)["read"])
    page = await client.get("/stuck")
    rows = re.findall(r'<tr class="row-(\w+)" data-customer="(\d+)">', page.text)
    assert rows == [("critical", str(seeded["cus_1001"])), ("overdue", str(seeded["app_2001"])),
                    ("overdue", str(seeded["usr_3001"])), ("none", str(seeded["cus_1002"])),
                    ("none", str(seeded["usr_3002"]))]
    words = text_of(page)
    for said in ("critical pending 5 h 12 min at Blaaiz", "overdue pending 4 h 12 min at connectFi",
                 "on time pending 1 h 27 min at CryptoPocket", "Blaaiz reviews businesses in 1 to 5 business days",
                 "E-mail Blaaiz operations (support@blaaiz.com) with the customer id cus_1001",
                 "connectFi publishes no review time: enquire with connectFi support about customer app_2001"):
        assert said in words, said


@pytest.mark.parametrize(("query", "expected"), [
    ("provider=cryptopocket", ["usr_3001", "usr_3002"]),
    ("customer_type=business", ["cus_1002"]),
    ("tier=overdue", ["app_2001", "usr_3001"]),
    ("provider=blaaiz&tier=none", ["cus_1002"]),
    ("q=user-3001", ["usr_3001"]),
    ("q=cus_1001", ["cus_1001"]),
    ("q=cus_1003", []),  # verified: not stuck
])
async def test_the_stuck_list_filters_from_its_url(client, container, seeded, query, expected) -> None:
    await sign_in(client, keys(container)["read"])
    page = await client.get(f"/stuck?{query}")
    assert page.status_code == 200
    shown = [int(i) for i in re.findall(r'<tr class="row-\w+" data-customer="(\d+)">', page.text)]
    assert shown == [seeded[pcid] for pcid in expected]


@pytest.mark.parametrize(("query", "words"), [
    ("provider=paypal", "provider must be one of blaaiz, connectfi, cryptopocket, not 'paypal'"),
    ("tier=late", "tier must be one of none, overdue, critical"),
    ("sort=age", "unknown filter 'sort'"),
    ("cursor=abc", "this page link is not one the dashboard made"),
])
async def test_a_bad_filter_is_a_clear_400(client, container, query, words) -> None:
    await sign_in(client, keys(container)["read"])
    page = await client.get(f"/stuck?{query}")
    assert page.status_code == 400
    assert words in text_of(page)


async def test_acknowledging_selected_rows_shows_the_count_then_acknowledges_exactly_those(client, container,
                                                                                           seeded) -> None:
    await sign_in(client, keys(container)["admin"])
    chosen = [str(seeded["cus_1001"]), str(seeded["usr_3001"])]
    confirm = await client.post("/stuck/acknowledge", data={"customer": chosen, "next": "/stuck?tier=overdue"},
                                headers=SAME)
    assert confirm.status_code == 200
    assert "Acknowledge 3 open alerts of 2 selected customers" in text_of(confirm)
    alert_ids = re.findall(r'name="alert" value="(\d+)"', confirm.text)
    assert len(alert_ids) == 3
    done = await client.post("/stuck/acknowledge", data={"confirm": "yes", "alert": alert_ids,
                                                         "next": "/stuck?tier=overdue"}, headers=SAME)
    assert done.status_code == 303
    assert done.headers["location"] == "/stuck?tier=overdue&notice=acknowledged&count=3"
    listed = (await client.get("/alerts?state=acknowledged")).text
    assert sorted(re.findall(r'<tr class="alert-acknowledged" data-alert="(\d+)">', listed)) == sorted(alert_ids)
    assert listed.count("by dash-admin") == 3
    again = await client.post("/stuck/acknowledge", data={"confirm": "yes", "alert": alert_ids}, headers=SAME)
    assert "Nothing to acknowledge" in text_of(await client.get(again.headers["location"]))
    nothing = await client.post("/stuck/acknowledge", data={}, headers=SAME)
    assert nothing.status_code == 400
    assert "select at least one customer" in text_of(nothing)
    bad = await client.post("/stuck/acknowledge", data={"customer": "1; drop"}, headers=SAME)
    assert bad.status_code == 400


async def test_an_overdue_acknowledgement_leaves_the_critical_alert_open(client, container, seeded) -> None:
    await sign_in(client, keys(container)["admin"])
    customer = seeded["cus_1001"]
    page = await client.get(f"/customers/{customer}")
    overdue = re.search(r'action="/alerts/(\d+)/acknowledge">\s*<input[^>]+>\s*<button type="submit">Acknowledge '
                        r'overdue alert', page.text)
    assert overdue is not None
    response = await client.post(f"/alerts/{overdue.group(1)}/acknowledge", data={"next": f"/customers/{customer}"},
                                 headers=SAME)
    assert response.status_code == 303
    page = await client.get(response.headers["location"])
    states = dict(re.findall(r'<tr class="alert-(\w+)" data-alert="(\d+)">', page.text)[::-1])
    assert set(states) == {"acknowledged", "open"}
    assert "Acknowledge critical alert" in page.text
    assert "by dash-admin" in text_of(page)
    assert (await client.post("/alerts/999/acknowledge", headers=SAME)).status_code == 404


async def test_setting_the_state_needs_a_reason_and_records_who(client, container, seeded) -> None:
    await sign_in(client, keys(container)["admin"])
    customer = seeded["usr_3002"]
    refused = await client.post(f"/customers/{customer}/state", data={"state": "verified", "reason": " "},
                                headers=SAME)
    assert refused.status_code == 422
    assert "reason is required" in text_of(refused)
    wrong = await client.post(f"/customers/{customer}/state", data={"state": "done", "reason": "x"}, headers=SAME)
    assert wrong.status_code == 422
    done = await client.post(f"/customers/{customer}/state", data={"state": "verified", "reason": "seen in person"},
                             headers=SAME)
    assert done.status_code == 303
    page = text_of(await client.get(done.headers["location"]))
    assert "State set" in page
    assert "pending → verified operator_set by operator (dash-admin); reason: seen in person" in page
    assert "verified at CryptoPocket" in page


async def test_poll_now_says_why_it_cannot(client, container, seeded) -> None:
    await sign_in(client, keys(container)["admin"])
    response = await client.post(f"/customers/{seeded['usr_3001']}/poll", headers=SAME)
    assert response.status_code == 409
    assert "cryptopocket is not polled by this tracker (its credentials are not set)" in text_of(response)
    assert (await client.post("/customers/99999/poll", headers=SAME)).status_code == 404


async def test_events_list_their_outcome_and_admins_replay_them(client, container, clock) -> None:
    stamp = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await post_blaaiz(client, clock, blaaiz_event("cus_9", "PROCESSING", updated_at=stamp))).status_code == 200
    assert (await post_blaaiz(client, clock, b'{"event_type": 1}')).status_code == 400
    await sign_in(client, keys(container)["admin"])
    rejected = await client.get("/events?outcome=rejected")
    assert rejected.status_code == 200
    rows = re.findall(r'<tr class="outcome-(\w+)" data-event="(\d+)">', rejected.text)
    assert [outcome for outcome, _ in rows] == ["rejected"]
    applied = re.findall(r'<tr class="outcome-applied" data-event="(\d+)">', (await client.get("/events")).text)
    assert len(applied) == 1
    response = await client.post(f"/events/{applied[0]}/replay", data={"next": "/events"}, headers=SAME)
    assert response.status_code == 303
    assert "Replayed" in text_of(await client.get(response.headers["location"]))
    assert (await client.post("/events/999/replay", headers=SAME)).status_code == 404
    assert (await client.get("/events?outcome=lost")).status_code == 400


async def test_pages_show_the_seeded_state(client, container, seeded) -> None:
    await sign_in(client, keys(container)["read"])
    overview = text_of(await client.get("/"))
    assert "critical pending 5 h 12 min at Blaaiz" in overview
    assert "no customer pending at" not in overview
    assert "Pending customers by age" in overview
    customer = await client.get(f"/customers/{seeded['cus_1001']}")
    words = text_of(customer)
    assert "Customer 1 (blaaiz cus_1001) is pending since 2026-01-05 09:00:00Z (5 h 12 min)." in words
    assert "awaiting_documents → pending submitted by api" in words
    assert "the API moved it awaiting_documents -> pending, by the rule awaiting_documents + submitted" in words
    alerts_page = text_of(await client.get("/alerts?state=open"))
    assert "blaaiz verification of cus_1001 pending 5 h 12 min: critical" in alerts_page
    assert (await client.get("/customers/424242")).status_code == 404
    assert (await client.get("/alerts?state=closed")).status_code == 400


async def test_rows_say_when_the_provider_was_last_heard_and_the_overview_its_health(client, container, clock,
                                                                                      seeded) -> None:
    await sign_in(client, keys(container)["admin"])
    # Blaaiz repeats a status the tracker has: nothing moves, but it was heard from
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1001", "PROCESSING",
                                                             updated_at="2026-01-05T14:00:00Z"))
    assert response.status_code == 200
    heard = f'datetime="{clock.now().isoformat()}"'
    stuck = await client.get("/stuck")
    cells = dict(re.findall(r'data-customer="(\d+)">(.*?)</tr>', stuck.text, re.S))
    assert heard in re.search(r'data-label="Last heard">(.*?)</td>', cells[str(seeded["cus_1001"])], re.S)[1]
    assert "never" in re.search(r'data-label="Last heard">(.*?)</td>', cells[str(seeded["app_2001"])], re.S)[1]
    # each row counts its own customer's open alerts
    open_alerts = {str(cid): sum(1 for row, _ in alerts.page(container.engine, "open", 100, None, customer_id=cid))
                   for cid in seeded.ids.values()}
    for cid, cell in cells.items():
        assert f'data-alerts="{open_alerts[cid]}"' in cell
    assert open_alerts[str(seeded["cus_1001"])] == 2
    overview = await client.get("/")
    health = dict(re.findall(r'<th scope="row">(\w+)</th>(.*?)</tr>', overview.text.split('id="h-health"')[1]
                             .split("</table>")[0], re.S))
    assert heard in health["Blaaiz"]
    assert "never" in health["CryptoPocket"]


async def test_the_alerts_page_lists_failed_deliveries_with_their_alert(client, container, seeded) -> None:
    await sign_in(client, keys(container)["read"])
    assert "None: every notification was delivered" in text_of(await client.get("/alerts"))
    with container.engine.begin() as conn:
        first = conn.execute(select(func.min(notifications.c.id))).scalar_one()
        conn.execute(update(notifications).where(notifications.c.id == first)
                     .values(state="failed", attempts=8, last_error="HTTP 500 from the receiver"))
    words = text_of(await client.get("/alerts"))
    assert "HTTP 500 from the receiver" in words
    assert re.search(r"\d+: blaaiz verification of \w+ pending", words)


async def test_static_files_are_served_and_nothing_else(client) -> None:
    css = await client.get("/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    js = await client.get("/static/dashboard.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert (await client.get("/static/..%2Fdashboard.py")).status_code == 404
    assert (await client.get("/static/app.py")).status_code == 404


async def test_a_bearer_header_is_taken_before_the_cookie(client, container) -> None:
    both = keys(container)
    await sign_in(client, both["admin"])
    page = await client.get("/", headers={"authorization": f"Bearer {both['read']}"})
    assert "Signed in as dash-read (read)" in text_of(page)
