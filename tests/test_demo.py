"""``tracker demo`` as someone runs it: a real process, its output, the tracker's HTTP API while the scenario plays
(alerts of both tiers, customers in every state at the three providers, the outage in the providers' health,
refused webhooks), then Ctrl-C: a clean stop, its temporary folder gone. The schedule itself is checked as data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tracker.demo import scenario

DEADLINE = 60.0  # seconds for the whole run, at --hour 2s (the scenario's 10 h take 20 s)
STATES = {"awaiting_documents", "pending", "verified", "rejected", "needs_action"}


def test_the_schedule_is_consistent() -> None:
    steps = scenario.schedule()
    assert [step.at for step in steps] == sorted(step.at for step in steps)
    assert all(0 <= step.at < scenario.END for step in steps)
    providers = scenario.providers()
    assert set(providers.values()) == {"blaaiz", "connectfi", "cryptopocket"}
    joined: set[str] = set()
    for step in steps:
        action = step.action
        if isinstance(action, scenario.Join):
            assert action.who not in joined, f"{action.who} joins twice"
            joined.add(action.who)
        elif not isinstance(action, scenario.Outage):
            assert action.who in joined, f"{step} before {action.who} joins"
    outages = [step for step in steps if isinstance(step.action, scenario.Outage)]
    assert [step.action.on for step in outages if isinstance(step.action, scenario.Outage)] == [True, False]


class Output:
    """The demo's stdout, read as it comes by a thread (the test polls the API meanwhile)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.stream = process.stdout
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.stream is not None
        for line in self.stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str, process: subprocess.Popen[str], deadline: float, log: Path) -> str:
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found.group(1)
            assert process.poll() is None, f"the demo exited with {process.returncode}:\n{self.text}\n" \
                                           f"{log.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the demo's output:\n{self.text}")


def what_the_api_shows(client: httpx.Client) -> dict[str, Any]:
    alerts = client.get("/v1/alerts", params={"limit": 500}).json()["items"]
    states: dict[str, set[str]] = {}
    for provider in ("blaaiz", "connectfi", "cryptopocket"):
        items = client.get("/v1/customers", params={"provider": provider, "limit": 500}).json()["items"]
        states[provider] = {customer["state"] for customer in items}
    summary = client.get("/v1/summary").json()["providers"]
    rejected = client.get("/v1/events", params={"outcome": "rejected", "limit": 50}).json()["items"]
    return {
        "open": {alert["kind"] for alert in alerts if alert["state"] == "open"},
        "alert_states": {alert["state"] for alert in alerts},
        "states": states,
        "failing": {provider for provider, info in summary.items()
                    if info["health"]["last_error"] or info["health"]["breaker"] != "closed"},
        "rejected_events": len(rejected),
    }


def shows_everything(seen: dict[str, Any]) -> bool:
    return ({"overdue", "critical"} <= seen["open"]
            and {"open", "acknowledged", "resolved"} <= seen["alert_states"]
            and all(len(states) >= 3 for states in seen["states"].values())
            and set().union(*seen["states"].values()) == STATES
            and "connectfi" in seen["failing"]
            and seen["rejected_events"] >= 1)


def test_demo_plays_the_scenario_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    started = time.monotonic()
    deadline = started + DEADLINE
    port = free_port()
    log = tmp_path / "demo.stderr"
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    with log.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "demo", "--hour", "2s", "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    output = Output(process)
    try:
        url = output.find(r"dashboard\s+(http://\S+)", process, deadline, log)
        key = output.find(r"admin key\s+(trk_\S+)", process, deadline, log)
        folder = Path(output.find(r"data\s+(\S+)/tracker\.db", process, deadline, log))
        assert url == f"http://127.0.0.1:{port}/"
        assert folder.is_dir()
        seen: dict[str, Any] = {}
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=10) as client:
            while time.monotonic() < deadline:
                assert process.poll() is None, f"the demo exited early:\n{output.text}\n{log.read_text()}"
                seen = what_the_api_shows(client)
                if shows_everything(seen):
                    break
                time.sleep(0.25)
        assert shows_everything(seen), f"{seen}\n{output.text}"
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=max(deadline - time.monotonic(), 20))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output.thread.join(timeout=5)
    assert status == 0, f"{output.text}\n{log.read_text()}"
    assert not folder.exists()
    assert f"tracker demo stopped; removed {folder}" in output.text
    assert "overdue opened" in output.text  # the demo's own account (its critical line may come after the API's)
    assert "Traceback" not in log.read_text()
    assert time.monotonic() - started < DEADLINE + 20
