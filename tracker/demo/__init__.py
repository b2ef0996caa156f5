"""``tracker demo``: the tracker on a temporary SQLite file with the three provider simulators, playing a scenario
in compressed time (``scenario``: what happens when; ``driver``: doing it; ``watch``: what the tracker makes of
it; ``runner``: the servers, the settings, the signals)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from tracker.durations import parse_duration

SHORTEST_HOUR = timedelta(seconds=1)
LONGEST_HOUR = timedelta(hours=1)


def _hour(text: str) -> timedelta:
    """An argparse type: how long an hour of the scenario lasts (``60s``, ``2s``, ``1m``)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not SHORTEST_HOUR <= value <= LONGEST_HOUR:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1s and 1h")
    return value


def _port(text: str) -> int:
    if not text.isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def add_parser(sub: Any) -> None:
    """Register ``tracker demo`` on the ``tracker`` command's subparsers."""
    demo = sub.add_parser("demo", help="the tracker with the three provider simulators, playing a scenario in "
                                       "compressed time (a minute stands for an hour)")
    demo.add_argument("--port", type=_port, default=8000, help="where the tracker listens (default 8000)")
    demo.add_argument("--hour", type=_hour, default=timedelta(seconds=60),
                      help="how long an hour of the scenario lasts in real time (default 60s)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from tracker.demo.runner import Options, run

    return run(Options(port=args.port, hour=args.hour))
