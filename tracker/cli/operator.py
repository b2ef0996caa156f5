"""The operator's commands: keys list and revoke, customers set-state and poll, explain, alerts list and ack."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from typing import Any

from tracker.cli.common import ready, settings_from_env, start_logging


def cmd_keys_list(args: argparse.Namespace) -> int:
    from tracker.apikeys import ApiKeys
    from tracker.bootstrap import database
    from tracker.clock import SystemClock

    engine = database(settings_from_env())
    try:
        keys = ApiKeys(engine, SystemClock()).listing(revoked=args.all)
    finally:
        engine.dispose()
    print(f"{'name':<24} {'scope':<6} {'prefix':<9} {'created':<20} {'last used':<20} revoked")
    for key in keys:
        print(f"{key.name:<24} {key.scope:<6} {key.prefix:<9} {_when(key.created_at):<20} "
              f"{_when(key.last_used_at):<20} {_when(key.revoked_at) if key.revoked_at else '-'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from tracker.apikeys import ApiKeys
    from tracker.bootstrap import database
    from tracker.clock import SystemClock

    settings = settings_from_env()
    engine = database(settings)
    try:
        key = ApiKeys(engine, SystemClock()).revoke(args.name)
    finally:
        engine.dispose()
    print(f"revoked key {key.name!r} ({key.scope}, trk_{key.prefix}_...); running processes refuse it within "
          f"{int(settings.api_key_cache_ttl.total_seconds())} s (TRACKER_API_KEY_CACHE_TTL)")
    return 0


def cmd_customers_set_state(args: argparse.Namespace) -> int:
    """The operator's override, by the same path as ``POST /v1/customers/{id}/state``."""
    from tracker.bootstrap import build

    settings = settings_from_env()
    start_logging(settings)
    container = build(settings)
    try:
        ready(container)
        result = container.customers.set_state(args.id, args.state, args.reason, args.by)
    finally:
        container.engine.dispose()
    row = result.row
    print(f"customer {row.id} ({row.provider} {row.provider_customer_id}) is {row.state}, version {row.version}")
    for warning in result.warnings:
        print(f"note: {warning}")
    return 0


def cmd_customers_poll(args: argparse.Namespace) -> int:
    """Poll one customer's provider now, by the same path as ``POST /v1/customers/{id}/poll``."""
    from tracker.bootstrap import build

    settings = settings_from_env()
    start_logging(settings)
    container = build(settings)

    async def run() -> Any:
        try:
            return await container.poller.poll_now(args.id, f"operator:{args.by}")
        finally:
            await container.http.aclose()

    try:
        ready(container)
        found = asyncio.run(run())
        row = container.customers.get(args.id)
    finally:
        container.engine.dispose()
    detail = found.error if found.outcome == "failed" else f"provider status {found.provider_status}"
    print(f"poll of customer {row.id} ({row.provider} {row.provider_customer_id}): {found.outcome} ({detail}); "
          f"it is {row.state}")
    return 1 if found.outcome == "failed" else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why a customer is in its state, as ``GET /v1/customers/{id}/explain`` says it (``--json``: the data)."""
    import json

    from tracker.bootstrap import build
    from tracker.web.explain_api import explanation

    settings = settings_from_env()
    container = build(settings)
    try:
        ready(container)
        found = explanation(container, args.id)
    finally:
        container.engine.dispose()
    print(json.dumps(found, default=str, indent=2) if args.json else "\n".join(found["text"]))
    return 0


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "never"


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    from tracker.bootstrap import database
    from tracker.clock import SystemClock
    from tracker.web.alerts_api import _acknowledge

    settings = settings_from_env()
    engine = database(settings)
    try:
        alert = _acknowledge(engine, args.id, args.by, SystemClock().now())
    finally:
        engine.dispose()
    print(f"alert {alert['id']} ({alert['kind']}, {alert['provider']}) is {alert['state']}")
    return 0


def cmd_alerts_list(args: argparse.Namespace) -> int:
    from tracker.bootstrap import database
    from tracker.web.alerts_api import _list

    settings = settings_from_env()
    engine = database(settings)
    try:
        for alert in _list(engine, args.state, args.limit, None):
            sent = ",".join(f"{n['channel']}:{n['state']}" for n in alert["notifications"]) or "-"
            print(f"{alert['id']:>6} {alert['state']:<12} {alert['kind']:<14} {alert['opened_at']} {alert['title']} "
                  f"[{sent}]")
    finally:
        engine.dispose()
    return 0
