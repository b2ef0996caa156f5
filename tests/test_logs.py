"""Logs people can use: a line at info for each state change, refused webhook and alert raised or resolved (ids
and statuses, never a secret, a signature, a body or an e-mail); one traceback per 500; text or JSON lines;
uvicorn's access log on demand; a worker's own /metrics and /healthz."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import SECRET, LiveServer, blaaiz_event, free_port, post_blaaiz, register, signed_headers
from tracker.bootstrap import Container
from tracker.cli.common import start_logging, uvicorn_logging
from tracker.clock import FakeClock
from tracker.errors import SettingsError
from tracker.settings import Settings
from tracker.web.app import create_app

EMAIL = "someone@example.invalid"  # what blaaiz_event carries
CHANGE = re.compile(r"^customer (\d+) (\w+) -> (\w+): provider=(\w+) trigger=(\w+) source=(\w+) event=(\w+)$")
ALERT = re.compile(r"^alert (\d+) (raised|resolved): kind=(\w+) customer=(\w+) provider=(\w+) incident=(\w+)$")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Tests that set up logging as a command does leave the root logger (and uvicorn's) as they found them."""
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    saved = list(root.handlers), root.level, list(access.handlers), access.level, access.propagate
    yield
    root.handlers[:], access.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    access.setLevel(saved[3])
    access.propagate = saved[4]


def lines(caplog: pytest.LogCaptureFixture, pattern: re.Pattern[str]) -> list[tuple[str, ...]]:
    return [match.groups() for record in caplog.records if (match := pattern.match(record.getMessage()))]


def everything(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def stamp(clock: FakeClock) -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the lines ------------------------------------------------------------------------------------------------


async def test_a_state_change_is_one_line_with_ids_and_states(client, clock, caplog) -> None:
    caplog.set_level(logging.INFO)
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", updated_at=stamp(clock)))
    assert response.status_code == 200
    event = response.json()["event"]
    changes = lines(caplog, CHANGE)
    assert len(changes) == 1, everything(caplog)
    customer, before, after, provider, _, source, event_id = changes[0]
    assert (before, after, provider, source, event_id) == ("awaiting_documents", "pending", "blaaiz", "webhook",
                                                           str(event))
    assert int(customer) >= 1
    assert EMAIL not in everything(caplog)
    assert "cus_1" not in changes[0]


async def test_nothing_is_logged_per_change_when_info_is_off(client, clock, caplog) -> None:
    caplog.set_level(logging.WARNING)
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", updated_at=stamp(clock)))
    assert lines(caplog, CHANGE) == []


@pytest.mark.parametrize(("case", "status", "code"), [
    ("bad signature", 401, "invalid_signature"),
    ("not json", 415, "unsupported_media_type"),
    ("unreadable", 400, "invalid_event"),
])
async def test_a_refused_webhook_is_one_line_without_body_or_signature(client, clock, caplog, case: str,
                                                                        status: int, code: str) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(blaaiz_event("cus_secretive", "VERIFIED", event_id="evt_do_not_log")).encode()
    timestamp = int(clock.now().timestamp())
    headers = signed_headers(body, timestamp, secret="whsec_not_ours" if case == "bad signature" else SECRET)
    if case == "not json":
        headers["content-type"] = "text/plain"
    if case == "unreadable":
        body = b'{"customer_email": "' + EMAIL.encode() + b'", "event_type": '
        headers = signed_headers(body, timestamp)
    response = await client.post("/webhooks/blaaiz", content=body, headers=headers)
    assert response.status_code == status
    refused = [record for record in caplog.records if record.getMessage().startswith("webhook refused")]
    assert len(refused) == 1, everything(caplog)
    assert refused[0].levelno == logging.INFO
    assert f"provider=blaaiz status={status} code={code} reason=" in refused[0].getMessage()
    logged = everything(caplog)
    for secret in (headers["x-blaaiz-signature"], SECRET, "whsec_not_ours", "evt_do_not_log", "cus_secretive",
                   EMAIL):
        assert secret not in logged


async def test_a_refused_connectfi_callback_does_not_log_its_token(client, caplog) -> None:
    caplog.set_level(logging.INFO)
    response = await client.post("/webhooks/connectfi/tok_guess_123", json={"data": {}})
    assert response.status_code == 401
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhook refused")]
    assert len(refused) == 1
    assert "provider=connectfi status=401" in refused[0]
    assert "tok_guess_123" not in "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tracker"))


async def test_alerts_raised_and_resolved_are_a_line_each(client, container: Container, clock, write_key,
                                                          caplog) -> None:
    caplog.set_level(logging.INFO)
    customer = await register(client, write_key, "cus_1")
    cid = str(customer["id"])
    await client.post(f"/v1/customers/{cid}/submit", headers=write_key)
    assert [(c[0], c[2], c[5]) for c in lines(caplog, CHANGE)] == [(cid, "pending", "api")]

    clock.advance(timedelta(hours=2))
    await container.escalator.tick()
    raised = lines(caplog, ALERT)
    assert [(a[1], a[2], a[3], a[4], a[5]) for a in raised] == [("raised", "overdue", cid, "blaaiz", "None")]
    overdue = raised[0][0]

    caplog.clear()
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", updated_at=stamp(clock)))
    assert [c[:3] for c in lines(caplog, CHANGE)] == [(cid, "pending", "verified")]
    assert lines(caplog, ALERT) == [(overdue, "resolved", "overdue", cid, "blaaiz", "None")]

    caplog.clear()
    clock.advance(timedelta(minutes=5))
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "REJECTED", updated_at=stamp(clock)))
    assert lines(caplog, CHANGE) == []  # a verified customer stays verified; the contradiction is an alert
    [conflict] = lines(caplog, ALERT)
    assert conflict[1:5] == ("raised", "conflict", cid, "blaaiz")
    assert EMAIL not in everything(caplog)


async def test_no_line_for_an_alert_whose_transaction_rolled_back(container: Container, clock, caplog) -> None:
    """The lines come from what was committed: a write that is rolled back logs nothing."""
    from tracker.alerts import raise_alerts
    from tracker.transitions.plans import NewAlert

    caplog.set_level(logging.INFO)
    with container.engine.connect() as conn:
        transaction = conn.begin()
        notices = raise_alerts(conn, container.writes.alerts, [NewAlert("conflict:x", "conflict", "blaaiz", "t")],
                               clock.now())
        transaction.rollback()
    assert [notice["action"] for notice in notices] == ["raised"]  # what the caller would publish after a commit
    assert lines(caplog, ALERT) == []


# -- one traceback per 500 --------------------------------------------------------------------------------------


async def boom(request: Request) -> Response:
    raise ZeroDivisionError("a bug")


def app_that_fails(container: Container) -> Any:
    app = create_app(container)
    app.router.routes.append(Route("/boom", boom))
    return app


async def test_an_unexpected_error_is_a_500_logged_once(container: Container, caplog) -> None:
    caplog.set_level(logging.INFO)
    transport = httpx.ASGITransport(app=app_that_fails(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://tracker.test") as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["unexpected error on GET /boom"]


def test_a_500_under_uvicorn_prints_one_traceback(container: Container, root_logging) -> None:
    out = io.StringIO()
    settings = Settings(database_url=container.settings.database_url, log_level="INFO")
    start_logging(settings, out)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_that_fails(container), host="127.0.0.1", port=port, lifespan="off",
                                           **uvicorn_logging(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.02)
        assert httpx.get(f"http://127.0.0.1:{port}/boom", timeout=10).status_code == 500
    finally:
        server.should_exit = True
        thread.join(20)
    text = out.getvalue()
    assert text.count("Traceback") == 1, text
    assert "unexpected error on GET /boom" in text
    assert "ZeroDivisionError: a bug" in text


# -- formats ------------------------------------------------------------------------------------------------------


def test_json_lines_parse_one_by_one(root_logging) -> None:
    out = io.StringIO()
    start_logging(Settings.from_env({"TRACKER_LOG_FORMAT": "json"}), out)
    log = logging.getLogger("tracker.test")
    log.info("two\nlines with %s", "args")
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("it failed")
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("INFO", "tracker.test", "two\nlines with args"), ("ERROR", "tracker.test", "it failed"),
        ("WARNING", "uvicorn.error", "from uvicorn")]
    assert "exc_info" not in entries[0]
    assert entries[1]["exc_info"].startswith("Traceback")
    assert "ValueError: broken" in entries[1]["exc_info"]
    for entry in entries:
        assert entry["time"].endswith("Z")
        when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        assert abs(when.timestamp() - time.time()) < 60


def test_text_is_the_default(root_logging) -> None:
    out = io.StringIO()
    start_logging(Settings.from_env({}), out)
    logging.getLogger("tracker.test").info("hello %s", 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO tracker.test: hello 7\n", out.getvalue())


@pytest.mark.parametrize(("env", "field", "value"), [
    ({}, "log_format", "text"), ({"TRACKER_LOG_FORMAT": "JSON"}, "log_format", "json"),
    ({}, "access_log", False), ({"TRACKER_ACCESS_LOG": "true"}, "access_log", True),
    ({"TRACKER_ACCESS_LOG": "0"}, "access_log", False), ({"TRACKER_ACCESS_LOG": "On"}, "access_log", True),
    ({}, "metrics_port", 9464), ({"TRACKER_METRICS_PORT": "0"}, "metrics_port", 0),
    ({"TRACKER_METRICS_PORT": "9100"}, "metrics_port", 9100),
])
def test_the_new_settings(env: dict[str, str], field: str, value: Any) -> None:
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(("name", "value"), [
    ("TRACKER_LOG_FORMAT", "xml"), ("TRACKER_ACCESS_LOG", "maybe"), ("TRACKER_ACCESS_LOG", ""),
    ("TRACKER_METRICS_PORT", "http"), ("TRACKER_METRICS_PORT", "-1"), ("TRACKER_METRICS_PORT", "65536"),
    ("TRACKER_METRICS_PORT", "²"),
])
def test_a_bad_new_setting_is_one_line_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert info.value.message.startswith(f"{name}: ")
    assert "\n" not in info.value.message


# -- real processes ---------------------------------------------------------------------------------------------


def clean_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    return {**env, "TRACKER_DATABASE_URL": database_url, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("on", [False, True])
def test_access_log_on_and_off(database_url: str, on: bool) -> None:
    # TRACKER_LOG_LEVEL=warning (LiveServer's): the access lines follow TRACKER_ACCESS_LOG alone.
    server = LiveServer(database_url, {"TRACKER_ACCESS_LOG": "true" if on else "false"})
    server.start()
    try:
        assert httpx.get(f"{server.url}/healthz?probe=1").status_code == 200
        assert httpx.post(f"{server.url}/webhooks/connectfi/tok_live_777", json={}).status_code == 401
    finally:
        server.stop()
    assert server.process is not None
    assert server.process.stderr is not None
    output = server.process.stderr.read().decode()
    access = [line for line in output.splitlines() if " uvicorn.access: " in line]
    if on:
        assert any('"GET /healthz?probe=1 HTTP/1.1" 200' in line for line in access), output
        assert any('"POST /webhooks/connectfi/*** HTTP/1.1" 401' in line for line in access), output
    else:
        assert access == [], output
    assert "tok_live_777" not in output


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.mark.slow
def test_worker_serves_metrics_and_healthz_and_logs_json(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    env = clean_env(database_url, TRACKER_METRICS_PORT=str(port), TRACKER_LOG_FORMAT="json",
                    TRACKER_ACCESS_LOG="true", TRACKER_LOG_LEVEL="info")
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker", "--metrics-host", "127.0.0.1"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        health = wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        for family in ("tracker_polls", "tracker_alerts", "tracker_notifications", "tracker_transitions"):
            assert f"# TYPE {family}" in metrics.text
        assert httpx.get(f"http://127.0.0.1:{port}/v1/customers", timeout=10).status_code == 404  # nothing else
    finally:
        code = stop(process)
    assert code == 0, log.read_text()
    entries = [json.loads(line) for line in log.read_text().splitlines()]  # every line is one JSON object
    assert all(set(entry) >= {"time", "level", "logger", "message"} for entry in entries)
    assert any(e["logger"] == "tracker" and e["message"] == f"worker serving /metrics and /healthz on "
               f"127.0.0.1:{port}" for e in entries)
    access = [e["message"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any('"GET /metrics HTTP/1.1" 200' in message for message in access), access
    assert any(e["logger"].startswith("uvicorn.") and e["logger"] != "uvicorn.access" for e in entries)


@pytest.mark.slow
def test_a_worker_whose_metrics_port_is_taken_says_so_and_runs_on(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(database_url, TRACKER_METRICS_PORT=str(port), TRACKER_LOG_LEVEL="info")
        with log.open("wb") as err:
            process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker", "--metrics-host",
                                        "127.0.0.1"], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while " polling " not in log.read_text():  # "worker <owner> polling ...": it runs
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            code = stop(process)
    assert code == 0, log.read_text()
    assert f"ERROR tracker: worker cannot serve /metrics and /healthz on 127.0.0.1:{port}" in log.read_text()


def test_a_write_that_moved_nothing_has_no_change_notices_but_logs_its_alerts(caplog) -> None:
    """A conflict or an undocumented status raises an alert without a move: callers that ask whether anything
    moved (``if changes``) still hear no, and the alert still gets its line."""
    from tracker.transitions.writes import Notices, Writes

    caplog.set_level(logging.INFO)
    alert = {"alert_id": 5, "action": "raised", "kind": "conflict", "customer_id": 3, "provider": "blaaiz",
             "incident_id": None}
    notices = Notices((), [alert])
    assert not notices
    heard: list[list[dict[str, Any]]] = []
    writes = Writes()
    writes.listeners.append(heard.append)
    writes.published(notices)
    assert lines(caplog, ALERT) == [("5", "raised", "conflict", "3", "blaaiz", "None")]
    assert heard == []
