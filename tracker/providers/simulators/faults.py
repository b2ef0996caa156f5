"""What a simulator does to requests besides answering them: injected faults (fail, throttle, hang) and rate
limits (sliding windows on the simulator's clock). ``SimulatorBase`` applies them in its request pipeline."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta

from tracker.clock import Clock
from tracker.providers.simulators.records import Fault, http_date


class FaultsAndLimits:
    """The fault queue and the rate-limit windows of one simulator (mixed into ``SimulatorBase``)."""

    clock: Clock
    _faults: list[Fault]
    _limits: list[tuple[int, float]]
    _windows: list[deque[datetime]]

    def fail(self, times: int = 1, status: int = 500, body: object = None, *, path: str | None = None,
             customer_id: str | None = None) -> None:
        """The next ``times`` matching requests answer ``status`` with ``body`` (JSON-able, or bytes/str sent
        as text; None: the provider's own error body)."""
        self._faults.append(Fault("fail", times, path, customer_id, status=status, body=body))

    def throttle(self, times: int = 1, retry_after: str | int | float | datetime | None = "5", *,
                 path: str | None = None, customer_id: str | None = None) -> None:
        """The next ``times`` matching requests answer 429 with ``Retry-After``: a string as given (seconds or
        an HTTP-date), a number of seconds, a datetime (sent as an HTTP-date; see ``retry_at``), or None
        (no header)."""
        self._faults.append(Fault("throttle", times, path, customer_id, retry_after=retry_after))

    def retry_at(self, seconds: float) -> str:
        """An HTTP-date ``seconds`` after the simulator's clock, for ``throttle(retry_after=...)``."""
        return http_date(self.clock.now() + timedelta(seconds=seconds))

    def hang(self, times: int = 1, seconds: float = 30.0, *, path: str | None = None,
             customer_id: str | None = None) -> None:
        """The next ``times`` matching requests sleep ``seconds`` (real time) before being answered normally."""
        self._faults.append(Fault("hang", times, path, customer_id, seconds=seconds))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return sum(f.times for f in self._faults if f.times > 0)

    def _take_fault(self, path: str, customer_id: str | None) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path, customer_id):
                fault.times -= 1
                self._faults = [f for f in self._faults if f.times > 0]
                return fault
        return None

    # ---------------------------------------------------------------------------------- rate limits

    @property
    def limits(self) -> list[tuple[int, float]]:
        """``[(count, window_seconds), ...]``: sliding windows on the clock. Assigning resets the windows."""
        return list(self._limits)

    @limits.setter
    def limits(self, value: Iterable[tuple[int, float]]) -> None:
        self._limits = [(int(count), float(window)) for count, window in value]
        self._windows = [deque() for _ in self._limits]

    def _prune(self, now: datetime) -> None:
        for (_count, window), stamps in zip(self._limits, self._windows, strict=True):
            edge = now - timedelta(seconds=window)
            while stamps and stamps[0] <= edge:
                stamps.popleft()

    def _admit(self, arrived: datetime | None = None) -> int | None:
        """Count one request that arrived at ``arrived`` (default: now); None if admitted, else whole seconds
        until a slot frees (at least 1). A provider counts requests as they arrive: the latency slept since
        must not move them, nor bunch them when several sleeps end late together on a busy machine."""
        if not self._limits:
            return None
        now = self.clock.now() if arrived is None else arrived
        self._prune(now)
        waits = [
            (stamps[0] + timedelta(seconds=window) - now).total_seconds()
            for (count, window), stamps in zip(self._limits, self._windows, strict=True)
            if len(stamps) >= count
        ]
        if waits:
            return max(1, math.ceil(max(waits)))
        for stamps in self._windows:
            bisect.insort(stamps, now)  # checks can come a little out of arrival order
        return None

    def rate_state(self) -> tuple[int, int, int] | None:
        """``(limit, remaining, reset_epoch)`` of the tightest window, or None without limits."""
        if not self._limits:
            return None
        now = self.clock.now()
        self._prune(now)
        best: tuple[int, int, int] | None = None
        for (count, window), stamps in zip(self._limits, self._windows, strict=True):
            remaining = max(0, count - len(stamps))
            reset_at = (stamps[0] if stamps else now) + timedelta(seconds=window)
            candidate = (count, remaining, math.ceil(reset_at.timestamp()))
            if best is None or remaining < best[1]:
                best = candidate
        return best
