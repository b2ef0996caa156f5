"""The dashboard's actions (admin, same origin; see ``dashboard_auth.action``): acknowledge alerts, one or all
of the selected customers' at once after a confirmation that shows their number, poll a customer now, set its
state with a reason, replay a stored event. Each answers with a redirect back to the page it came from."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tracker import alerts
from tracker.apikeys import Principal
from tracker.domain.events import MAX_ID
from tracker.errors import NotFound, TrackerError
from tracker.web.dashboard_auth import action
from tracker.web.dashboard_render import local_path, render, with_query
from tracker.web.requests import path_id

MAX_SELECTED = 500
POLL_OUTCOMES = ("changed", "unchanged", "failed")


def _back(target: str, notice: str, **params: Any) -> Response:
    return RedirectResponse(with_query(target, notice=notice, **params), 303)


def _ids(form: FormData, name: str, what: str) -> list[int]:
    """The ids a form sends under ``name`` (checkboxes, hidden fields): 400 for anything but ids."""
    values = form.getlist(name)
    if len(values) > MAX_SELECTED:
        raise TrackerError(f"select at most {MAX_SELECTED} {what} at once")
    ids = []
    for value in values:
        if not isinstance(value, str) or not value.isdigit() or not 0 < int(value) <= MAX_ID:
            raise TrackerError(f"{value!r} is not a {what} id")
        ids.append(int(value))
    return sorted(set(ids))


def _acknowledge(engine: Any, alert_ids: list[int], actor: str, now: Any) -> int:
    """Acknowledge those of ``alert_ids`` still open; how many that was (one acknowledged or resolved meanwhile
    keeps who did that, and when)."""
    done = 0
    for alert_id in alert_ids:
        found = alerts.get(engine, alert_id)
        if found is None or found.state != "open":
            continue
        if alerts.acknowledge_by(engine, alert_id, actor, now) is not None:
            done += 1
    return done


@action
async def acknowledge(request: Request, principal: Principal) -> Response:
    container = request.app.state.container
    alert_id = path_id(request)
    form = await request.form()
    found = await run_in_threadpool(alerts.acknowledge_by, container.engine, alert_id, principal.name,
                                    container.clock.now())
    if found is None:
        raise NotFound(f"no alert with id {alert_id}")
    return _back(local_path(form.get("next"), "/alerts"), "acknowledged")


def _open_alerts_of(engine: Any, customer_ids: list[int]) -> list[Any]:
    return [row for customer_id in customer_ids
            for row, _ in alerts.page(engine, "open", MAX_SELECTED, None, customer_id=customer_id)]


@action
async def acknowledge_selected(request: Request, principal: Principal) -> Response:
    """First the confirmation (how many open alerts of how many customers), then, confirmed, exactly the alerts
    it showed: one raised meanwhile waits for its own acknowledgement."""
    container = request.app.state.container
    form = await request.form()
    target = local_path(form.get("next"), "/stuck")
    if form.get("confirm") == "yes":
        alert_ids = _ids(form, "alert", "alert")
        done = await run_in_threadpool(_acknowledge, container.engine, alert_ids, principal.name,
                                       container.clock.now())
        return _back(target, "acknowledged" if done else "acknowledged_none", count=done if done else None)
    customer_ids = _ids(form, "customer", "customer")
    if not customer_ids:
        raise TrackerError("select at least one customer (the boxes at the start of the rows) first")
    found = await run_in_threadpool(_open_alerts_of, container.engine, customer_ids)
    return render(request, "confirm.html", {
        "title": "Acknowledge alerts", "section": "stuck", "alerts": found, "customers": len(customer_ids),
        "next": target}, principal=principal)


@action
async def poll(request: Request, principal: Principal) -> Response:
    container = request.app.state.container
    customer_id = path_id(request)
    found = await container.poller.poll_now(customer_id, f"operator:{principal.name}")
    outcome = found.outcome if found.outcome in POLL_OUTCOMES else "changed"
    return _back(f"/customers/{customer_id}", f"polled_{outcome}")


@action
async def set_state(request: Request, principal: Principal) -> Response:
    container = request.app.state.container
    customer_id = path_id(request)
    form = await request.form()
    result = await run_in_threadpool(container.customers.set_state, customer_id, form.get("state"),
                                     form.get("reason"), principal.name)
    return _back(f"/customers/{customer_id}", "state_unchanged" if result.warnings else "state_set")


@action
async def replay(request: Request, principal: Principal) -> Response:
    container = request.app.state.container
    event_id = path_id(request)
    form = await request.form()
    try:
        await run_in_threadpool(container.applier.replay, event_id, f"operator:{principal.name}")
    except LookupError:
        raise NotFound(f"no stored event with id {event_id}") from None
    return _back(local_path(form.get("next"), "/events"), "replayed")
