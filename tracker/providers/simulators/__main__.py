"""Run one provider simulator as a real HTTP server (benches, demos).

    python -m tracker.providers.simulators blaaiz --port 9101 --latency 0.05 --rate 20/s --rate 1000/m \\
        --customers 500 --status processing

Blaaiz keeps its documented limits (120/m, 1500/h) unless ``--rate`` or ``--no-rate-limit`` is given.
Counters are at ``GET /_sim/stats``, the request log (arrival times, customer, status, client port) at
``GET /_sim/log?after=N&path=TEXT``; ``POST /_sim/records {"id", "status", ...}`` adds or changes a record;
``POST /_sim/reset`` clears the counters and the log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tracker.providers.simulators import blaaiz as blaaiz_module
from tracker.providers.simulators.blaaiz import BlaaizSimulator
from tracker.providers.simulators.common import SimulatorBase
from tracker.providers.simulators.connectfi import ConnectFiSimulator
from tracker.providers.simulators.cryptopocket import CryptoPocketSimulator
from tracker.providers.simulators.records import parse_rate

DEFAULT_STATUS = {"blaaiz": "PROCESSING", "connectfi": "waiting_review", "cryptopocket": "processing"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tracker.providers.simulators",
                                description="Run a provider simulator with uvicorn.")
    p.add_argument("provider", choices=sorted(DEFAULT_STATUS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.0, help="seconds slept on every request")
    p.add_argument("--rate", action="append", default=[], metavar="N/s|N/m|N/h",
                   help="a rate limit (repeatable); replaces the provider's default limits")
    p.add_argument("--no-rate-limit", action="store_true", help="no rate limits at all")
    p.add_argument("--token-lifetime", type=float, default=None, help="seconds a token lives")
    p.add_argument("--customers", type=int, default=0, help="records to create at start")
    p.add_argument("--status", default=None, help="their status (default: the provider's 'under review')")
    p.add_argument("--signing-secret", default=None, help="Blaaiz webhook signing secret")
    p.add_argument("--no-log", action="store_true", help="keep counters only, not every request")
    p.add_argument("--log-level", default="warning")
    return p


def build(args: argparse.Namespace) -> SimulatorBase:
    """The simulator the arguments describe (no server started)."""
    try:
        limits = [parse_rate(text) for text in args.rate]
    except ValueError as exc:
        raise SystemExit(f"--rate: {exc}") from None
    status = args.status or DEFAULT_STATUS[args.provider]
    sim: SimulatorBase
    if args.provider == "blaaiz":
        blaaiz = BlaaizSimulator(signing_secret=args.signing_secret, latency=args.latency,
                                 keep_log=not args.no_log)
        if status.upper() in blaaiz_module.STATUSES:
            status = status.upper()
        blaaiz.add_customers(args.customers, status)
        sim = blaaiz
    elif args.provider == "connectfi":
        connectfi = ConnectFiSimulator(latency=args.latency, keep_log=not args.no_log)
        connectfi.add_applications(args.customers, status)
        sim = connectfi
    else:
        cryptopocket = CryptoPocketSimulator(latency=args.latency, keep_log=not args.no_log)
        cryptopocket.add_customers(args.customers, status)
        sim = cryptopocket
    if args.no_rate_limit:
        sim.limits = []
    elif limits:
        sim.limits = limits
    if args.token_lifetime is not None:
        sim.token_lifetime = args.token_lifetime if args.token_lifetime > 0 else None
    return sim


def describe(sim: SimulatorBase, url: str) -> str:
    if isinstance(sim, BlaaizSimulator):
        extra = (f"client_id={sim.client_id} client_secret={sim.client_secret} "
                 f"signing_secret={sim.signing_secret}")
    elif isinstance(sim, ConnectFiSimulator):
        extra = f"login={sim.login} password={sim.password}"
    elif isinstance(sim, CryptoPocketSimulator):
        extra = f"base={url}/api api_key={sim.api_key} api_secret={sim.api_secret}"
    else:
        extra = ""
    limits = ", ".join(f"{count}/{window:g}s" for count, window in sim.limits) or "none"
    return f"{sim.name} simulator on {url} ({len(sim.record_ids)} records, limits: {limits}) {extra}".rstrip()


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = parser().parse_args(argv)
    sim = build(args)
    print(describe(sim, f"http://{args.host}:{args.port}"), file=sys.stderr, flush=True)
    uvicorn.run(sim.app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
