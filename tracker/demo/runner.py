"""Runs ``tracker demo``: the three provider simulators and the tracker as real HTTP servers in this process, on
a SQLite file in a temporary folder, with the thresholds scaled to the scenario's hour; plays the scenario and
prints what happens until Ctrl-C (or SIGTERM), then stops the servers and removes the folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tracker.demo import scenario
from tracker.demo.driver import Driver, Inbound, Simulators
from tracker.demo.watch import Watcher
from tracker.domain.lifecycle import PROVIDERS
from tracker.providers.simulators import BlaaizSimulator, ConnectFiSimulator, CryptoPocketSimulator
from tracker.settings import Settings

log = logging.getLogger("tracker.demo")
HOST = "127.0.0.1"
ADMIN_KEY_NAME = "demo-admin"
DEMO_BUDGET = ((10, timedelta(seconds=1)),)  # requests a second per provider: the simulators do not limit
STARTUP_TIMEOUT = 30.0  # seconds


@dataclass(frozen=True)
class Options:
    port: int
    hour: timedelta  # how long an hour of the scenario lasts


def scaled(hour: timedelta, minutes: float, floor: timedelta = timedelta(0)) -> timedelta:
    """``minutes`` of scenario time as real time, at least ``floor``."""
    return max(hour * (minutes / 60), floor)


def demo_settings(options: Options, folder: Path, sims: Simulators, urls: dict[str, str], token: str) -> Settings:
    """The tracker's settings, built here (not from the environment): the simulators, their credentials, and every
    duration that means scenario time scaled to ``--hour`` (the tiers, polling, repeats, incident window)."""
    hour, second = options.hour, timedelta(seconds=1)
    settings = Settings(
        database_url=f"sqlite:///{folder / 'tracker.db'}",
        log_level="ERROR",  # the demo prints what the tracker does, as its API tells it
        metrics_port=0,
        blaaiz_webhook_secrets=(sims.blaaiz.signing_secret,),
        blaaiz_base_url=urls["blaaiz"],
        blaaiz_client_id=sims.blaaiz.client_id,
        blaaiz_client_secret=sims.blaaiz.client_secret,
        connectfi_base_url=urls["connectfi"],
        connectfi_login=sims.connectfi.login,
        connectfi_password=sims.connectfi.password,
        connectfi_webhook_token=token,
        cryptopocket_base_url=f"{urls['cryptopocket']}/api",
        cryptopocket_api_key=sims.cryptopocket.api_key,
        cryptopocket_api_secret=sims.cryptopocket.api_secret,
        overdue_after=scaled(hour, 120),
        critical_after=scaled(hour, 300),
        poll_interval=scaled(hour, 5, second),
        awaiting_poll_interval=scaled(hour, 15, second),
        reconcile_after=scaled(hour, 10, second),
        critical_repeat=scaled(hour, 60, second),
        incident_window=scaled(hour, 10, second),
        tick=min(max(hour / 60, timedelta(seconds=0.25)), second),
        rate_limits=dict.fromkeys(PROVIDERS, DEMO_BUDGET),
    )
    settings.check()
    return settings


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to the demo, which stops every server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Any) -> _Server:
    # log_config None: uvicorn keeps out of the logging set-up (the tracker's handler takes its records).
    return _Server(uvicorn.Config(app, log_config=None, log_level=None, access_log=False, server_header=False,
                                  timeout_graceful_shutdown=5))


class Demo:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.hour = options.hour.total_seconds()
        self.started = 0.0  # loop time when the scenario began
        self.stop = asyncio.Event()

    def say(self, text: str) -> None:
        """One line of the demo's output, stamped with scenario hours and real time since the start."""
        elapsed = asyncio.get_running_loop().time() - self.started
        minutes, seconds = divmod(int(elapsed), 60)
        print(f"{elapsed / self.hour:6.2f}h {minutes:3d}:{seconds:02d}  {text}", flush=True)

    async def play(self, driver: Driver) -> None:
        loop = asyncio.get_running_loop()
        providers = scenario.providers()
        for step in scenario.schedule():
            delay = self.started + step.at * self.hour - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                result = await driver.run(step.action)
            except Exception as exc:  # a bug in the demo: say so, and play on
                log.exception("demo step %s failed", step)
                result = f"failed: {type(exc).__name__}"
            if isinstance(step.action, scenario.Outage):
                provider, who = step.action.provider, ""
            else:
                who = step.action.who
                provider = providers[who]
            note = f"  [{step.note}]" if step.note else ""
            self.say(f"{provider:<12} {who:<11} {scenario.describe(step.action, provider)} -> {result}{note}")
        delay = self.started + scenario.END * self.hour - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.say("scenario over: the tracker keeps running (pending customers keep escalating); Ctrl-C stops it")

    async def main(self, folder: Path) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            tracker_socket = _listen(self.options.port)
        except OSError as exc:
            print(f"tracker demo: cannot listen on {HOST}:{self.options.port} ({exc.strerror}); "
                  "choose another --port", file=sys.stderr)
            return 1
        sockets = {name: _listen(0) for name in PROVIDERS}
        port = tracker_socket.getsockname()[1]
        base = f"http://{HOST}:{port}"
        urls = {name: f"http://{HOST}:{sock.getsockname()[1]}" for name, sock in sockets.items()}
        sims = Simulators(BlaaizSimulator(limits=(), keep_log=False), ConnectFiSimulator(keep_log=False),
                          CryptoPocketSimulator(keep_log=False))
        token = secrets.token_urlsafe(24)
        inbound = Inbound(f"{base}/webhooks/blaaiz", f"{base}/webhooks/connectfi/{token}",
                          f"{base}/webhooks/cryptopocket")
        sims.blaaiz.collection_url = inbound.blaaiz
        sims.cryptopocket.webhook_urls["kyc"] = inbound.cryptopocket
        settings = demo_settings(self.options, folder, sims, urls, token)
        container, key, app = _tracker(settings)
        servers = [(_server(app), tracker_socket)] + [(_server(getattr(sims, name).app), sockets[name])
                                                      for name in PROVIDERS]
        tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
        headers = {"authorization": f"Bearer {key}"}
        status = 0
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api, \
                httpx.AsyncClient(timeout=30) as push:
            try:
                if await self._started(servers, tasks):
                    self._banner(settings, base, key, urls, folder)
                    watcher = Watcher(api, self.say, interval=min(max(self.hour / 30, 0.5), 2.0))
                    background = [asyncio.create_task(self.play(Driver(api, push, sims, inbound))),
                                  asyncio.create_task(watcher.run())]
                    await self.stop.wait()
                    for task in background:
                        task.cancel()
                    await asyncio.gather(*background, return_exceptions=True)
                    print("stopping: the tracker finishes its polls in flight, then the simulators stop", flush=True)
                elif not self.stop.is_set():
                    status = 1
            finally:
                # The tracker first: its worker drains its polls while the simulators still answer.
                for (server, _), task in zip(servers, tasks, strict=True):
                    server.should_exit = True
                    await asyncio.gather(task, return_exceptions=True)
                await _settle()
                container.engine.dispose()
        return status

    async def _started(self, servers: list[tuple[_Server, socket.socket]], tasks: list[asyncio.Task[None]]) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while not all(server.started for server, _ in servers):
            if self.stop.is_set():
                return False
            if any(task.done() for task in tasks) or loop.time() > deadline:
                print("tracker demo: a server did not start; stopping", file=sys.stderr)
                return False
            await asyncio.sleep(0.05)
        self.started = loop.time()
        return True

    def _banner(self, settings: Settings, base: str, key: str, urls: dict[str, str], folder: Path) -> None:
        def span(value: timedelta) -> str:
            return f"{value.total_seconds():g}s"

        lines = [
            f"tracker demo: an hour of the scenario lasts {span(self.options.hour)} of real time; "
            f"overdue after 2h ({span(settings.overdue_after)}), critical after 5h ({span(settings.critical_after)})",
            f"  dashboard   {base}/",
            f"  admin key   {key}",
            f"  try         curl -H 'authorization: Bearer {key}' {base}/v1/summary",
            "  simulators  " + ", ".join(f"{name} {url}" for name, url in urls.items()),
            f"  data        {folder}/tracker.db (removed on exit)",
            f"  scenario    {len(scenario.providers())} customers at 3 providers over {scenario.END:g}h; "
            "connectFi is down from 3h to 6h; Ctrl-C stops the demo",
        ]
        print("\n".join(lines), flush=True)


async def _settle(timeout: float = 5.0) -> None:
    """Let the scheduler's last steps finish (its shutdown does not wait for them), rather than have the loop
    cancel them mid-step as it closes."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    if left:
        await asyncio.wait(left, timeout=timeout)


def _tracker(settings: Settings) -> tuple[Any, str, Any]:
    """The tracker as ``tracker serve`` builds it (the scheduler in this process), its database migrated, and a
    new admin key."""
    from tracker.bootstrap import build, prepare_database
    from tracker.cli.common import start_logging
    from tracker.web.app import create_app

    start_logging(settings)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a tick skipped while the last one runs is no news
    container = build(settings)
    prepare_database(container, upgrade=True)
    key = container.api_keys.create(ADMIN_KEY_NAME, "admin")
    return container, key, create_app(container, worker=True)


def run(options: Options) -> int:
    """The demo's exit status: 0 when stopped by a signal, 1 when it could not start."""
    folder = Path(tempfile.mkdtemp(prefix="tracker-demo-"))
    status = 1
    try:
        status = asyncio.run(Demo(options).main(folder))
        return status
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if status == 0:
            print(f"tracker demo stopped; removed {folder}", flush=True)
