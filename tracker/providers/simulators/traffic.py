"""What went through a simulator: the log of the requests it answered, the webhooks it sent (and the sending
itself, so each one is logged), and the counters tests and benches read. ``SimulatorBase`` mixes it in; its
request pipeline writes the log and the counters."""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import httpx

from tracker.providers.simulators.records import Delivery, RequestRecord, SimRecord


class TrafficLog:
    """The request log, the delivery log and the counters of one simulator (mixed into ``SimulatorBase``)."""

    name: str
    keep_log: bool
    requests: list[RequestRecord]
    deliveries: list[Delivery]
    in_flight: int
    max_in_flight: int
    peak_per_second: int
    total_requests: int
    _recent: deque[float]
    _records: dict[str, SimRecord]

    def count(self, path_contains: str | None = None, customer_id: str | None = None, *,
              status: int | None = None, method: str | None = None) -> int:
        return sum(1 for r in self.requests
                   if (path_contains is None or path_contains in r.path)
                   and (customer_id is None or r.customer_id == customer_id)
                   and (status is None or r.status == status)
                   and (method is None or r.method == method.upper()))

    def max_in_window(self, seconds: float = 1.0, *, by: Literal["monotonic", "clock"] = "monotonic",
                      path_contains: str | None = None) -> int:
        """Most logged requests that arrived within any ``seconds`` (real monotonic time, or the clock)."""
        if by == "clock":
            stamps = sorted(r.at.timestamp() for r in self.requests
                            if path_contains is None or path_contains in r.path)
        else:
            stamps = sorted(r.monotonic for r in self.requests if path_contains is None or path_contains in r.path)
        best = 0
        start = 0
        for end, stamp in enumerate(stamps):
            while stamps[start] <= stamp - seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def reset_log(self) -> None:
        """Forget the request log and the counters (not the records, faults, tokens or windows)."""
        self.requests.clear()
        self.deliveries.clear()
        self.max_in_flight = self.in_flight
        self.peak_per_second = 0
        self.total_requests = 0
        self._recent.clear()

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for r in self.requests:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
        return {"provider": self.name, "total_requests": self.total_requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "peak_per_second": self.peak_per_second,
                "by_status": by_status, "records": len(self._records)}

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
                    ) -> httpx.Response:
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            self.deliveries.append(Delivery(url, body, headers, None))
            raise
        self.deliveries.append(Delivery(url, body, headers, response.status_code))
        return response
