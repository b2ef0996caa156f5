"""``kill -9`` of the server under webhook load, three times: no acknowledged event lost, none stored twice,
each applied exactly once once the server runs again.

A short run of bench/kill9.py (the full run is ``bench/kill9``: 10 rounds on both backends) on the backend of
this test run: a real ``tracker serve`` process is SIGKILLed in the middle of a concurrent signed-webhook load,
restarted, sent new events and provider-style retries of the unanswered ones, three times over; then a final
retry sends every event still unanswered. The database must hold every acknowledged event exactly once, and the
restarted server's applier must apply each exactly once (one history row each, no customer moved twice).
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import BACKEND, require_postgres

pytestmark = [pytest.mark.slow, *([pytest.mark.postgres] if BACKEND == "postgres" else [])]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "kill9.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_kill9", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_kill9_three_rounds_loses_and_doubles_nothing() -> None:
    if BACKEND == "postgres":
        require_postgres()
    kill9 = load_bench()
    out = io.StringIO()
    report = kill9.run(BACKEND, rounds=3, concurrency=32, min_load=0.5, max_load=1.5, out=out)
    text = out.getvalue()
    assert len(report.rounds) == 3, text
    assert sum(r.acked_new for r in report.rounds) > 0, text  # the load really reached the server
    assert report.missing == [], text
    assert report.doubled == [], text
    assert report.lost_rows == [], text
    assert report.strangers == [], text
    assert report.unexpected == [], text
    assert report.still_unacknowledged == [], text  # the final retry got every event answered
    assert len(report.final.stored) == len(report.events), text  # ... and now every event is stored once
    assert report.final.unapplied == [], text  # ... and applied
    assert report.final.moved_twice == [], text  # ... exactly once
    assert report.passed, text
