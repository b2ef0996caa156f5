"""The ``tracker`` command: serve, worker, db upgrade, keys create, replay; the operator's commands (keys list and
revoke, customers set-state, alerts) are in ``tracker.cli.operator``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from tracker.cli.common import describe, ready, settings_from_env, start_logging, uvicorn_logging
from tracker.cli.operator import (
    cmd_alerts_ack,
    cmd_alerts_list,
    cmd_customers_poll,
    cmd_customers_set_state,
    cmd_explain,
    cmd_keys_list,
    cmd_keys_revoke,
)
from tracker.demo import add_parser as add_demo_parser
from tracker.domain.events import MAX_ID
from tracker.domain.lifecycle import State
from tracker.errors import SettingsError, TrackerError

log = logging.getLogger("tracker")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tracker.bootstrap import build, prepare_database
    from tracker.web.app import create_app

    settings = settings_from_env()
    start_logging(settings)
    container = build(settings)
    prepare_database(container, upgrade=settings.is_sqlite)
    log.info("%s; serving on %s:%s%s", describe(container), args.host, args.port,
             " (no scheduler: --no-worker)" if args.no_worker else "")
    app = create_app(container, worker=not args.no_worker)
    # Everything built so far lives as long as the process: keep it out of the full collections, which
    # otherwise pause every request for tens of milliseconds (bench/ingest's p99).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=True, server_header=False,
                timeout_graceful_shutdown=10, **uvicorn_logging(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from tracker.bootstrap import build, prepare_database
    from tracker.cli.metrics_server import MetricsServer

    settings = settings_from_env()
    start_logging(settings)
    container = build(settings)
    prepare_database(container, upgrade=settings.is_sqlite)
    log.info("%s; worker", describe(container))
    metrics = MetricsServer(container, args.metrics_host)
    if not container.poller.plans:
        log.warning("no provider credentials are configured: there is nothing to poll")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        container.start()  # the inbox's applier runs here too
        await container.start_worker()
        await metrics.start()
        log.info("worker %s polling %s", container.poller.owner, ", ".join(container.poller.plans) or "nothing")
        await stop.wait()
        log.info("worker stopping: finishing the polls in flight")
        await container.stop_worker()
        await metrics.stop()
        container.stop()

    asyncio.run(run())
    container.engine.dispose()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from tracker.bootstrap import upgrade_database

    settings = settings_from_env()
    start_logging(settings)
    print(f"database at {upgrade_database(settings, args.revision)}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from tracker.apikeys import ApiKeys
    from tracker.bootstrap import database
    from tracker.clock import SystemClock

    settings = settings_from_env()
    engine = database(settings)
    key = ApiKeys(engine, SystemClock()).create(args.name, args.scope)
    engine.dispose()
    print(f"Created API key {args.name!r} with scope {args.scope}. It is shown once; store it now:")
    print(key)
    return 0


def progress(done: int, total: int, started: float, out: TextIO) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.monotonic() - started, 1e-9)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({rate:.0f}/s)")
    out.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    """Stored events through the current code again, by the same path as the applier and the replay API."""
    from tracker.bootstrap import build
    from tracker.inbox.replays import count_replayable, replayable

    settings = settings_from_env()
    start_logging(settings)
    container = build(settings)
    ready(container)
    applier = container.applier
    outcomes = None if args.all else [o.strip() for o in args.outcome.split(",") if o.strip()]
    total = count_replayable(container.engine, args.provider, outcomes)
    tally: dict[str, int] = {}
    done, last, started = 0, 0, time.monotonic()
    show = sys.stderr.isatty() or args.progress
    while True:
        ids = replayable(container.engine, args.provider, outcomes, after_id=last, limit=500)
        if not ids:
            break
        for event_id in ids:
            result = applier.replay(event_id, actor="replay:cli")
            tally[result.outcome] = tally.get(result.outcome, 0) + 1
            done += 1
            if show and (done % 50 == 0 or done == total):
                progress(done, total, started, sys.stderr)
        last = ids[-1]
    if show:
        sys.stderr.write("\n")
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())) or "nothing to replay"
    print(f"replayed {done} event(s): {summary}")
    container.engine.dispose()
    return 0


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (argparse turns the ValueError into a usage
    error naming the option, exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    from tracker import __version__

    root = argparse.ArgumentParser(prog="tracker", description="Tracks KYC/KYB verifications at several providers.")
    root.add_argument("--version", action="version", version=f"tracker {__version__}")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web app (and, unless --no-worker, the scheduler)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_bounded(1, 65535), default=8000)
    serve.add_argument("--no-worker", action="store_true", help="do not run the scheduler in this process")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run only the scheduler")
    worker.add_argument("--metrics-host", default="0.0.0.0",  # noqa: S104 - scraped from outside, as exporters are
                        help="where /metrics and /healthz listen (port: TRACKER_METRICS_PORT, 0 for none)")
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply the migrations")
    upgrade.add_argument("--revision", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once, alone on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    create.set_defaults(func=cmd_keys_create)
    keys_list = keys_sub.add_parser("list", help="name, scope, created, last used (never the key)")
    keys_list.add_argument("--all", action="store_true", help="revoked keys too")
    keys_list.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke the live key of that name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_keys_revoke)

    customers = sub.add_parser("customers", help="customers: operator actions")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True)
    set_state = customers_sub.add_parser("set-state", help="set a customer's state by hand (kept in its history)")
    set_state.add_argument("id", type=_bounded(1, MAX_ID))
    set_state.add_argument("state", choices=[state.value for state in State])
    set_state.add_argument("--reason", required=True, help="why (kept in the history)")
    set_state.add_argument("--by", required=True, help="who sets it (kept in the history)")
    set_state.set_defaults(func=cmd_customers_set_state)
    poll = customers_sub.add_parser("poll", help="poll a customer's provider now and apply its answer")
    poll.add_argument("id", type=_bounded(1, MAX_ID))
    poll.add_argument("--by", default="cli", help="who asks (kept in the history of any change it makes)")
    poll.set_defaults(func=cmd_customers_poll)

    explain = sub.add_parser("explain", help="why a customer is in its state: its moves, the rules, the events")
    explain.add_argument("id", type=_bounded(1, MAX_ID))
    explain.add_argument("--json", action="store_true", help="the explanation as data")
    explain.set_defaults(func=cmd_explain)

    alerts = sub.add_parser("alerts", help="alerts: list, acknowledge")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    ack = alerts_sub.add_parser("ack", help="acknowledge an alert (stops critical repeats)")
    ack.add_argument("id", type=_bounded(1, MAX_ID))
    ack.add_argument("--by", default="cli", help="who acknowledges it (kept with the alert)")
    ack.set_defaults(func=cmd_alerts_ack)
    listing = alerts_sub.add_parser("list", help="newest first")
    listing.add_argument("--state", choices=["open", "acknowledged", "resolved"])
    listing.add_argument("--limit", type=_bounded(1, 500), default=50)
    listing.set_defaults(func=cmd_alerts_list)

    replay = sub.add_parser("replay", help="run stored events through the current code again")
    replay.add_argument("--provider", choices=["blaaiz", "connectfi", "cryptopocket"])
    replay.add_argument("--outcome", default="error", help="comma-separated outcomes to replay (default: error)")
    replay.add_argument("--all", action="store_true", help="replay every stored event (not duplicates)")
    replay.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    replay.set_defaults(func=cmd_replay)

    add_demo_parser(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SettingsError as exc:
        print(f"tracker: {exc.message}", file=sys.stderr)
        return 2
    except TrackerError as exc:
        print(f"tracker: {exc.message}", file=sys.stderr)
        return 1

