"""The customer records a simulator answers about: adding, reading and changing them, status changes scripted
over (clock) time, and the changes not yet handed out for webhooks. ``SimulatorBase`` mixes it in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tracker.clock import Clock
from tracker.providers.simulators.records import SimRecord, StatusChange


class RecordStore:
    """The customer (or application) records of one simulator (mixed into ``SimulatorBase``)."""

    name: str
    clock: Clock
    _records: dict[str, SimRecord]
    _seq: int

    def _add(self, record_id: str, status: str, fields: dict[str, Any], *, created_at: datetime | None = None
             ) -> SimRecord:
        now = self.clock.now()
        self._seq += 1
        comment = fields.pop("comment", None)
        record = SimRecord(record_id, status, dict(fields), created_at or now, created_at or now, self._seq,
                           comment=comment, announced=status)
        self._records[record_id] = record
        return record

    def record(self, record_id: str) -> SimRecord:
        try:
            return self._records[record_id]
        except KeyError:
            raise KeyError(f"{self.name} simulator has no record {record_id!r}") from None

    def has(self, record_id: str) -> bool:
        return record_id in self._records

    def remove(self, record_id: str) -> None:
        self._records.pop(record_id, None)

    @property
    def record_ids(self) -> list[str]:
        return list(self._records)

    def status_of(self, record_id: str) -> str:
        """The status as a request would see it now (scripts applied)."""
        return self.record(record_id).current(self.clock.now())[0]

    def set_status(self, record_id: str, status: str, **fields: Any) -> None:
        """Change the status now (drops any script); ``fields`` update the record (``comment=`` is kept for
        webhooks)."""
        record = self.record(record_id)
        now = self.clock.now()
        if "comment" in fields:
            record.comment = fields.pop("comment")
        record.fields.update(fields)
        record.status = status
        record.updated_at = now
        record.script_start = None
        record.steps = []

    def script(self, record_id: str, steps: Sequence[tuple[float, str]]) -> None:
        """From now (per the clock), the status becomes ``steps[i][1]`` once ``steps[i][0]`` seconds have
        passed. Read lazily at request time; ``set_status`` drops the script."""
        record = self.record(record_id)
        now = self.clock.now()
        record.status, record.updated_at = record.current(now)
        record.script_start = now
        record.steps = sorted(((float(offset), status) for offset, status in steps), key=lambda step: step[0])

    def pop_changes(self) -> list[StatusChange]:
        """Status changes (set_status or scripts) since the last call, one per record, for demos that turn
        them into webhooks."""
        now = self.clock.now()
        changes: list[StatusChange] = []
        for record in self._records.values():
            status, at = record.current(now)
            if status != record.announced:
                changes.append(StatusChange(record.id, record.announced, status, at))
                record.announced = status
        return changes
