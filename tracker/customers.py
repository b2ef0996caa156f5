"""The customer API's application steps: register, report uploads, submit, read. One transaction each."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row

from tracker.clock import Clock
from tracker.db import queries
from tracker.db.engine import write_transaction
from tracker.db.reads import CustomerReads
from tracker.domain.events import unstorable
from tracker.domain.lifecycle import PROVIDERS, Outcome, Signal, Source, State, Trigger
from tracker.domain.polling import PUSHING_PROVIDERS
from tracker.errors import Conflict, Invalid, NotFound
from tracker.providers import blaaiz
from tracker.transitions.plans import Customer, Rules, first_poll, plan, pollable
from tracker.transitions.writes import ConcurrentChange, Writes

CUSTOMER_TYPES = ("individual", "business")
# The documented document types of the providers that have no fixed upload slots.
CONNECTFI_DOCUMENT_TYPES = ("license", "passport", "residence_permit", "identification_card", "utility",
                            "bank_statement")
CRYPTOPOCKET_DOCUMENT_TYPES = (
    "onboarding_form", "bank_statement", "payslip", "employment_contract", "tax_return", "tax_certificate",
    "company_accounts", "dividend_statement", "investment_statement", "crypto_wallet_statement",
    "sale_of_property", "sale_of_vehicle", "sale_of_company_shares", "inheritance_document", "gift_declaration",
    "loan_agreement", "savings_evidence", "invoice", "freelance_income_evidence", "pension_statement",
    "unemployment_benefit_statement", "source_of_funds_declaration", "other",
)
BUSINESS_SLOT_FLAG = "business_upload_via_individual_slot"
REJECTIONS_BEFORE_WARNING = 2
MAX_REASON = 500
MAX_DOCUMENT_TYPE = 64  # the uploads table's column
UNKNOWN_TYPE = ("this customer was discovered by webhook and its type is unknown; register it with "
                "POST /v1/customers (customer_type individual or business) first")
ID_TEXT = r"^[A-Za-z0-9._:@/+=-]{1,128}$"  # ids at providers and the client's own keys
_ID_TEXT = re.compile(ID_TEXT)


@dataclass
class CustomerResult:
    row: Row[Any]
    created: bool = False
    warnings: list[str] = field(default_factory=list)


def _text_id(name: str, value: Any, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise Invalid(f"{name} is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID_TEXT.fullmatch(value):
        raise Invalid(f"{name} must be 1 to 128 letters, digits or ._:@/+=- characters")
    return value


class Customers:
    def __init__(self, engine: Engine, clock: Clock, writes: Writes, rules: Rules) -> None:
        self.engine = engine
        self.clock = clock
        self.writes = writes
        self.rules = rules
        self.reads = CustomerReads(engine)

    # -- writes -------------------------------------------------------------------------------------------

    def register(self, body: Mapping[str, Any]) -> CustomerResult:
        provider = body.get("provider")
        if provider not in PROVIDERS:
            raise Invalid(f"provider must be one of {', '.join(PROVIDERS)}")
        pcid = _text_id("provider_customer_id", body.get("provider_customer_id"))
        assert pcid is not None
        customer_type = body.get("customer_type")
        if customer_type not in CUSTOMER_TYPES:
            raise Invalid("customer_type must be individual or business")
        reference = _text_id("reference", body.get("reference"), required=False)
        application_id = _text_id("application_id", body.get("application_id"), required=False)
        unknown = set(body) - {"provider", "provider_customer_id", "customer_type", "reference", "application_id"}
        if unknown:
            raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        now = self.clock.now()
        wanted = {"customer_type": customer_type, "reference": reference, "application_id": application_id}
        new = {"provider": provider, "provider_customer_id": pcid, "state": State.AWAITING_DOCUMENTS.value,
               "version": 1, "discovered_by": "api", "created_at": now, "updated_at": now, "tier": "none",
               "attempts": 0, "rejections": 0, **wanted}
        new["next_poll_at"] = first_poll(new, now, self.rules.polling)
        with self._begin() as conn:
            created = queries.insert_customer(conn, new)
            row = queries.lock_customers(conn, provider, [pcid])[pcid]
            fill = {}
            for name, value in wanted.items():
                current = row._mapping[name]
                if value is None or current == value:
                    continue
                if current is None or (name == "customer_type" and current == "unknown"):
                    fill[name] = value
                else:
                    raise Conflict(f"{provider} customer {pcid} is registered already with {name} {current!r}, "
                                   f"not {value!r}")
            if fill:
                if row.next_poll_at is None and row.state != State.VERIFIED.value:
                    fill["next_poll_at"] = first_poll({**row._mapping, **fill}, now, self.rules.polling)
                fill.update(_id=row.id, _version=row.version, version=row.version + 1, updated_at=now)
                queries.update_customers(conn, [fill])
                row = self._lock(conn, row.id)
        return CustomerResult(row, created=created)

    def report_upload(self, customer_id: int, body: Mapping[str, Any]) -> CustomerResult:
        slot = body.get("slot")
        if not isinstance(slot, str) or not slot:
            raise Invalid("slot is required")
        file_id = _text_id("file_id", body.get("file_id"), required=False)
        document_type = body.get("document_type")
        if document_type is not None and not isinstance(document_type, str):
            raise Invalid("document_type must be a string")
        problem = unstorable([("document_type", document_type, MAX_DOCUMENT_TYPE)])
        if problem:
            raise Invalid(problem)
        unknown = set(body) - {"slot", "file_id", "document_type"}
        if unknown:
            raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        now = self.clock.now()
        warnings: list[str] = []
        with self._begin() as conn:
            row = self._lock(conn, customer_id)
            flag = None
            starts_review = self._check_upload(row, slot, document_type, warnings)
            if row.provider == blaaiz.NAME and row.customer_type == "business":
                flag = BUSINESS_SLOT_FLAG
                warnings.append("business customers upload through the business endpoints (owner files, KYB "
                                "documents); this upload does not start the review and has been flagged")
            queries.insert_upload(conn, {"customer_id": row.id, "slot": slot, "file_id": file_id,
                                         "document_type": document_type, "flag": flag, "reported_at": now})
            changes: list[dict[str, Any]] = []
            if flag is not None:
                flags = queries.flags_of(row._mapping)
                if flag not in flags:
                    queries.update_customers(conn, [{"_id": row.id, "_version": row.version,
                                                     "flags": json.dumps([*flags, flag]),
                                                     "version": row.version + 1, "updated_at": now}])
            elif starts_review:
                self._warn_resubmission(row, warnings)
                changes = self._submitted(conn, row, now, f"upload of {slot}", warnings)
            row = self._lock(conn, row.id)
        self.writes.published(changes)
        return CustomerResult(row, warnings=warnings)

    def submit(self, customer_id: int) -> CustomerResult:
        """The integrator has submitted the customer for review at its provider (any provider): the clock starts
        and the provider is polled at once, so what it says (in review, more data wanted, decided) shows soon."""
        now = self.clock.now()
        warnings: list[str] = []
        with self._begin() as conn:
            row = self._lock(conn, customer_id)
            if row.customer_type == "unknown":
                raise Conflict(UNKNOWN_TYPE)
            if row.state == State.VERIFIED.value:
                raise Conflict("the customer is verified; there is nothing to submit")
            self._warn_resubmission(row, warnings)
            changes = self._submitted(conn, row, now, "submit", warnings)
            row = self._lock(conn, row.id)
        self.writes.published(changes)
        return CustomerResult(row, warnings=warnings)

    def set_state(self, customer_id: int, state: Any, reason: Any, actor: str) -> CustomerResult:
        """An operator's override: the customer moves to ``state`` from wherever it is (verified included),
        through the same plan and writer as every other move; the history row says ``operator``, who and why."""
        states = [s.value for s in State]
        if not isinstance(state, str) or state not in states:
            raise Invalid(f"state must be one of {', '.join(states)}")
        if not isinstance(reason, str) or not reason.strip():
            raise Invalid("reason is required: say why the state is set by hand (it is kept in the history)")
        problem = unstorable([("reason", reason, MAX_REASON)])
        if problem:
            raise Invalid(problem)
        if not actor.strip():
            raise Invalid("say who sets the state (kept in the history)")
        now = self.clock.now()
        signal = Signal(Trigger.OPERATOR_SET, Source.OPERATOR, comment=reason.strip(), target=State(state))
        with self._begin() as conn:
            row = self._lock(conn, customer_id)
            changes = self._apply(conn, row, signal, now, actor.strip()[:64])
            row = self._lock(conn, row.id)
        self.writes.published(changes)
        return CustomerResult(row, warnings=[] if changes else [f"the customer is already {state}; nothing changed"])

    # -- reads --------------------------------------------------------------------------------------------

    def get(self, customer_id: int) -> Row[Any]:
        with self.engine.connect() as conn:
            row = queries.get_customer(conn, customer_id)
        if row is None:
            raise NotFound(f"no customer with id {customer_id}")
        return row

    async def fetch(self, customer_id: int) -> dict[str, Any]:
        """The API's read of one customer (the hot path; see tracker.db.reads): the columns the API shows."""
        row = await self.reads.get(customer_id)
        if row is None:
            raise NotFound(f"no customer with id {customer_id}")
        return row

    async def fetch_key(self, customer_id: int) -> dict[str, Any]:
        """Only what the customer's ETag is made of (reads.KEY_COLUMNS): enough to answer If-None-Match."""
        key = await self.reads.key(customer_id)
        if key is None:
            raise NotFound(f"no customer with id {customer_id}")
        return key

    def history(self, customer_id: int) -> tuple[Row[Any], list[Row[Any]], list[Row[Any]], list[Row[Any]]]:
        with self.engine.connect() as conn:
            row = queries.get_customer(conn, customer_id)
            if row is None:
                raise NotFound(f"no customer with id {customer_id}")
            return (row, queries.customer_history(conn, customer_id), queries.customer_events(conn, customer_id),
                    queries.customer_uploads(conn, customer_id))

    def page(self, **filters: Any) -> list[dict[str, Any]]:
        """A page of the list, newest change first (filters as ``queries.list_customers``); rows as dicts."""
        return self.reads.page(**filters)

    # -- helpers ------------------------------------------------------------------------------------------

    def _begin(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)

    @staticmethod
    def _lock(conn: Connection, customer_id: int) -> Row[Any]:
        row = queries.lock_customer(conn, customer_id)
        if row is None:
            raise NotFound(f"no customer with id {customer_id}")
        return row

    @staticmethod
    def _check_upload(row: Row[Any], slot: str, document_type: str | None, warnings: list[str]) -> bool:
        """Check the upload against the provider's rules; return whether it starts the review."""
        if row.provider == blaaiz.NAME:
            if slot not in blaaiz.UPLOAD_SLOTS:
                raise Invalid(f"slot must be one of {', '.join(blaaiz.UPLOAD_SLOTS)} for Blaaiz")
            if slot == blaaiz.REVIEW_STARTING_SLOT:
                if document_type in blaaiz.ID_TYPES_REFUSED:
                    raise Invalid(f"{blaaiz.ID_TYPES_REFUSED[document_type]}: upload a driver's licence "
                                  "(drivers_license), passport or resident permit (resident_permit) instead",
                                  code="document_not_accepted")
                if document_type not in blaaiz.ID_TYPES_ACCEPTED:
                    raise Invalid("document_type is required for id_file and must be one of "
                                  f"{', '.join(blaaiz.ID_TYPES_ACCEPTED)}")
            if row.customer_type == "unknown":
                raise Conflict(UNKNOWN_TYPE)
            if row.state == State.PENDING.value and row.customer_type == "individual":
                raise Conflict("Blaaiz refuses uploads while a review runs; wait for its decision")
            if row.state == State.VERIFIED.value:
                raise Conflict("the customer is verified; Blaaiz takes no more uploads")
            return slot == blaaiz.REVIEW_STARTING_SLOT and row.customer_type == "individual"
        allowed = CONNECTFI_DOCUMENT_TYPES if row.provider == "connectfi" else CRYPTOPOCKET_DOCUMENT_TYPES
        if slot not in allowed:
            raise Invalid(f"slot must be a {row.provider} document type: {', '.join(allowed)}")
        # The integrator uploads a connectFi application's documents itself: that submits it. CryptoPocket's
        # users upload in its app; the integrator's report is kept, and /submit or the provider starts the clock.
        return bool(row.provider == "connectfi" and row.state != State.VERIFIED.value)

    @staticmethod
    def _warn_resubmission(row: Row[Any], warnings: list[str]) -> None:
        if row.state == State.REJECTED.value and row.rejections >= REJECTIONS_BEFORE_WARNING:
            warnings.append(
                f"this customer has been rejected {row.rejections} times; Blaaiz blacklists customers after "
                "repeated fraudulent attempts, so check the documents before resubmitting"
            )

    def _submitted(self, conn: Connection, row: Row[Any], now: datetime, actor: str, warnings: list[str]
                   ) -> list[dict[str, Any]]:
        """Start a review (``submitted``, source api) and, when it moved, poll a provider that does not push
        its news at the next tick (Blaaiz calls back; its polls keep their own schedule)."""
        known = pollable(row.provider, row.application_id)
        at_once = known and row.provider not in PUSHING_PROVIDERS
        if not known:
            warnings.append("connectFi is polled by application id and this customer has none; register it "
                            "again with application_id so the tracker can ask connectFi how the review goes")
        return self._apply(conn, row, Signal(Trigger.SUBMITTED, Source.API), now, actor,
                           {"next_poll_at": now} if at_once else None)

    def _apply(self, conn: Connection, row: Row[Any], signal: Signal, now: datetime, actor: str,
               extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Plan and write one move; ``extra``: columns to store with it (only if it moves the customer)."""
        planned = plan(Customer.of(row._mapping), signal, now, self.rules, actor=actor)
        if planned.decision.outcome in (Outcome.REFUSED, Outcome.CONFLICT):
            raise Conflict(f"cannot {signal.trigger.value if signal.trigger else 'apply'} now: "
                           f"{planned.decision.reason}")
        if extra and planned.change is not None:
            planned = replace(planned, values={**planned.values, **extra})
        try:
            return self.writes.write(conn, [planned], now)
        except ConcurrentChange:
            raise Conflict("the customer changed while this request ran; try again") from None
