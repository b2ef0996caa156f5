"""Input no real client sends, answered with a clear 4xx on SQLite and PostgreSQL alike, never a 500, and with
nothing changed: ids beyond 64 bits, cursors and numbers out of range, durations no clock can subtract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from tracker.db.tables import customers, history
from tracker.errors import SettingsError
from tracker.settings import Settings
from tracker.web.responses import encode_cursor

HUGE = ["9223372036854775808", "99999999999999999999999"]  # 2**63, and far beyond


def changed(container) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with container.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(customers)).scalar_one(),
                conn.execute(select(func.count()).select_from(history)).scalar_one())


@pytest.mark.parametrize("ident", HUGE)
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/customers/{}", None),
    ("GET", "/v1/customers/{}/history", None),
    ("POST", "/v1/customers/{}/uploads", {"document": "identity"}),
    ("POST", "/v1/customers/{}/submit", None),
    ("POST", "/v1/alerts/{}/acknowledge", None),
    ("POST", "/v1/events/{}/replay", None),
])
async def test_ids_beyond_64_bits_are_not_found(client, container, admin_key, ident, method, path, body) -> None:
    before = changed(container)
    response = await client.request(method, path.format(ident), headers=admin_key, json=body)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "ids are at most 9223372036854775807" in error["message"]
    assert changed(container) == before


@pytest.mark.parametrize("query", [
    f"cursor={encode_cursor(datetime(2026, 1, 5, tzinfo=UTC), 2**64)}",
    "cursor=bm90IGEgY3Vyc29y",
    "pending_longer_than=999999999d",
    "pending_longer_than=99999999999999999999999s",
])
async def test_customer_list_parameters_out_of_range_are_400(client, read_key, query) -> None:
    response = await client.get(f"/v1/customers?{query}", headers=read_key)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("query", ["before=99999999999999999999", "before=0", "before=-3", "limit=0"])
async def test_alert_list_parameters_out_of_range_are_400(client, read_key, query) -> None:
    response = await client.get(f"/v1/alerts?{query}", headers=read_key)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"


def test_a_duration_too_long_for_any_clock_is_one_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"TRACKER_OVERDUE_AFTER": "99999999999d"})
    assert str(info.value).startswith("TRACKER_OVERDUE_AFTER: ")
    assert "longest duration" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("env", "names"), [
    ({"TRACKER_OVERDUE_AFTER": "6h"}, ("TRACKER_OVERDUE_AFTER", "TRACKER_CRITICAL_AFTER")),
    ({"TRACKER_BLAAIZ_OVERDUE_AFTER": "6h"}, ("TRACKER_BLAAIZ_OVERDUE_AFTER", "TRACKER_CRITICAL_AFTER")),
    ({"TRACKER_CRITICAL_AFTER": "1h"}, ("TRACKER_OVERDUE_AFTER", "TRACKER_CRITICAL_AFTER")),
    ({"TRACKER_CONNECTFI_CRITICAL_AFTER": "1h"}, ("TRACKER_OVERDUE_AFTER", "TRACKER_CONNECTFI_CRITICAL_AFTER")),
])
def test_inconsistent_thresholds_name_the_variables_that_were_set(env, names) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert all(name in message for name in names), message
    assert "TRACKER_BLAAIZ_CRITICAL_AFTER" not in message


async def test_a_body_nested_50000_levels_deep_is_400_on_the_api(client, container, write_key) -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    response = await client.post("/v1/customers", content=body,
                                 headers={**write_key, "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]["message"]
    assert changed(container) == (0, 0)


@pytest.mark.parametrize("depth", [50_000, 2_000, 900, 300])
async def test_a_signed_webhook_nested_deep_is_never_a_500(client, clock, container, depth) -> None:
    """The whole body, or one field, nested deep: refused (400, kept as rejected) where it cannot be read or
    written back; where it can, the deep field is simply not used. Never a 500 the provider retries for ever."""
    from tests.conftest import post_blaaiz

    whole = b"[" * depth + b"]" * depth
    response = await post_blaaiz(client, clock, whole)
    assert response.status_code == 400, response.text
    if depth > 1000:
        assert "nested too deeply" in response.json()["error"]["message"]
    field = (b'{"event_type":"customer.status_changed","customer_id":"cus_d","new_status":"PROCESSING",'
             b'"updated_at":"2026-01-05T09:00:00Z","event_id":"evt_deep_%d","comment":' % depth
             + b"[" * depth + b"]" * depth + b"}")
    response = await post_blaaiz(client, clock, field)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_event"
