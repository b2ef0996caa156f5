"""Settings from the environment: defaults, durations, one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from tracker.durations import format_duration, parse_duration
from tracker.errors import SettingsError
from tracker.settings import Settings


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("5d", 432000),
                                               ("1h30m", 5400), ("45", 45), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2x", "h", "2h 3", "-5m", "fast"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("90s", "15m", "2h", "5d"):
        assert format_duration(parse_duration(text)) == text


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///./tracker.db"
    assert settings.blaaiz_webhook_tolerance == 300
    assert settings.overdue_after == timedelta(hours=2)
    assert settings.critical_after == timedelta(hours=5)
    assert settings.tick == timedelta(seconds=1)
    assert settings.awaiting_poll_interval == timedelta(minutes=15)
    assert settings.reconcile_after == timedelta(minutes=10)


def test_values_and_per_provider_overrides() -> None:
    settings = Settings.from_env({
        "TRACKER_DATABASE_URL": "postgresql://u@h/db", "TRACKER_BLAAIZ_WEBHOOK_SECRETS": "a, b",
        "TRACKER_BLAAIZ_WEBHOOK_TOLERANCE": "0", "TRACKER_CONNECTFI_OVERDUE_AFTER": "3h",
        "TRACKER_CONNECTFI_CRITICAL_AFTER": "6h", "PATH": "/bin",
    })
    assert settings.blaaiz_webhook_secrets == ("a", "b")
    assert settings.blaaiz_webhook_tolerance == 0
    assert settings.overdue_for("connectfi") == timedelta(hours=3)
    assert settings.overdue_for("blaaiz") == timedelta(hours=2)
    assert not settings.is_sqlite


@pytest.mark.parametrize(("env", "named"), [
    ({"TRACKER_OVERDUE_AFTER": "soon"}, "TRACKER_OVERDUE_AFTER"),
    ({"TRACKER_TICK": "0s"}, "TRACKER_TICK"),
    ({"TRACKER_DATABASE_URL": "mysql://x"}, "TRACKER_DATABASE_URL"),
    ({"TRACKER_BLAAIZ_BASE_URL": "ftp://x"}, "TRACKER_BLAAIZ_BASE_URL"),
    ({"TRACKER_BLAAIZ_WEBHOOK_SECRETS": "a,,b"}, "TRACKER_BLAAIZ_WEBHOOK_SECRETS"),
    ({"TRACKER_BLAAIZ_WEBHOOK_TOLERANCE": "-1"}, "TRACKER_BLAAIZ_WEBHOOK_TOLERANCE"),
    ({"TRACKER_OVERDUE_AFTR": "2h"}, "TRACKER_OVERDUE_AFTR"),
    ({"TRACKER_CRITICAL_AFTER": "1h"}, "CRITICAL_AFTER"),
    ({"TRACKER_ALERT_WEBHOOK_URL": "https://x.test/h"}, "TRACKER_ALERT_WEBHOOK_SECRET"),
    ({"TRACKER_ALERT_SMTP_URL": "http://x"}, "TRACKER_ALERT_SMTP_URL"),
])
def test_bad_setting_names_itself(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert named in info.value.message
    assert "\n" not in info.value.message


def test_bad_setting_stops_startup_with_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "tracker.cli", "serve"], capture_output=True, text=True,
                            env={"TRACKER_TICK": "often", "PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tracker: TRACKER_TICK:")
