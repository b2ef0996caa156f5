"""What happens in ``tracker demo``, and when: a pure schedule, as data (no I/O, no clock).

Times are scenario hours from the start; the runner maps them to real time (``--hour``, 60 s by default, so a
minute stands for an hour). The tracker's tiers are 2 h (``overdue``) and 5 h (``critical``) of scenario time.

The cast, 32 customers with provider ids only (no personal data):

- Blaaiz (``cus_demo_NN``, pushes signed webhooks; an ID upload reaches it, and it answers ``PROCESSING``):
  verified in minutes, rejected then resubmitted and verified, rejected, stuck past both tiers (its critical
  alert acknowledged), verified late after its overdue alert (resolved), waiting for its ID document, asked
  for more by an operator, a business in its 5-day KYB window, and two late submissions, still young when the
  scenario ends.
- connectFi (customer ``cf_cust_NN``, application ``cf_app_NN``, polled; callbacks): the same stories, a data
  request (``needs_action``), and an outage from 3 h to 6 h during which two decisions are made that the tracker
  can only see once connectFi answers again.
- CryptoPocket (``usr_demo_NN``, polled; signed webhooks): the same, a user who has not opened the KYC form, an
  undocumented status (``unknown_status`` alert) and an operator's request for more documents.
- Bad deliveries: an unreadable Blaaiz time, a connectFi callback without its application, a CryptoPocket
  webhook without a status (stored as ``rejected``) and a Blaaiz webhook signed with a retired secret (401).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Via = Literal["webhook", "poll"]
Fault = Literal["unreadable_time", "forged_signature", "missing_application", "missing_status"]


@dataclass(frozen=True)
class Join:
    """The provider holds a record with ``status`` (None: its 'not started'), and the integrator registers the
    customer. connectFi: ``application`` False registers it before any journey (no application id)."""

    who: str
    provider: str
    customer_type: str = "individual"
    status: str | None = None
    application: bool = True


@dataclass(frozen=True)
class Upload:
    """The integrator reports an upload (``POST /v1/customers/{id}/uploads``)."""

    who: str
    slot: str
    document_type: str | None = None


@dataclass(frozen=True)
class Submit:
    """The integrator says the customer was submitted for review (``POST /v1/customers/{id}/submit``)."""

    who: str


@dataclass(frozen=True)
class Says:
    """The provider's status changes to ``status``; ``via`` webhook: it tells the tracker (Blaaiz and CryptoPocket
    sign a webhook, connectFi calls back), else the tracker finds out when it polls."""

    who: str
    status: str
    via: Via = "webhook"
    comment: str | None = None  # Blaaiz: the rejection reason
    outcome: str | None = None  # connectFi: the outcome of a completed journey


@dataclass(frozen=True)
class BadDelivery:
    """A provider sends a webhook the tracker must refuse."""

    who: str
    fault: Fault


@dataclass(frozen=True)
class Outage:
    """Every API call to ``provider`` answers 503 (``on``), or answers again."""

    provider: str
    on: bool


@dataclass(frozen=True)
class Acknowledge:
    """An operator acknowledges the customer's open alert of ``kind`` (``POST /v1/alerts/{id}/acknowledge``)."""

    who: str
    kind: str


@dataclass(frozen=True)
class Operator:
    """An operator sets the state by hand, with a reason (``POST /v1/customers/{id}/state``)."""

    who: str
    state: str
    reason: str


Action = Join | Upload | Submit | Says | BadDelivery | Outage | Acknowledge | Operator


@dataclass(frozen=True)
class Step:
    at: float  # scenario hours from the start
    action: Action
    note: str = ""


KYB_WINDOW = "5 business days of KYB: no hour-based tiers"
STUCK = "stuck: crosses overdue at +2h and critical at +5h"

BLAAIZ: tuple[Step, ...] = (
    Step(0.05, Join("cus_demo_01", "blaaiz")),
    Step(0.10, Upload("cus_demo_01", "id_file", "passport")),
    Step(0.70, Says("cus_demo_01", "VERIFIED")),
    Step(0.10, Join("cus_demo_02", "blaaiz")),
    Step(0.20, Upload("cus_demo_02", "id_file", "drivers_license")),
    Step(1.30, Says("cus_demo_02", "VERIFIED")),
    Step(0.15, Join("cus_demo_03", "blaaiz")),
    Step(0.25, Upload("cus_demo_03", "id_file", "passport")),
    Step(0.90, Says("cus_demo_03", "REJECTED", comment="the passport has expired")),
    Step(1.60, Upload("cus_demo_03", "id_file", "passport"), "resubmits with a new passport"),
    Step(2.70, Says("cus_demo_03", "VERIFIED")),
    Step(0.20, Join("cus_demo_04", "blaaiz")),
    Step(0.30, Upload("cus_demo_04", "id_file", "passport")),
    Step(1.10, Says("cus_demo_04", "REJECTED", comment="the selfie does not match the document")),
    Step(0.25, Join("cus_demo_05", "blaaiz")),
    Step(0.30, Upload("cus_demo_05", "id_file", "resident_permit"), STUCK),
    Step(1.80, BadDelivery("cus_demo_05", "unreadable_time")),
    Step(6.50, Acknowledge("cus_demo_05", "critical")),
    Step(0.30, Join("cus_demo_06", "blaaiz")),
    Step(0.40, Upload("cus_demo_06", "id_file", "passport"), "slow: verified after its overdue alert"),
    Step(3.00, Says("cus_demo_06", "VERIFIED")),
    Step(0.35, Join("cus_demo_07", "blaaiz")),
    Step(0.50, Upload("cus_demo_07", "proof_of_address_file"), "the ID document is still to come"),
    Step(0.40, Join("cus_demo_08", "blaaiz")),
    Step(0.50, Upload("cus_demo_08", "id_file", "drivers_license")),
    Step(1.50, Operator("cus_demo_08", "needs_action", "proof of address unreadable; asked for a new one")),
    Step(0.45, Join("cus_demo_09", "blaaiz", "business")),
    Step(0.60, Submit("cus_demo_09"), KYB_WINDOW),
    Step(4.50, BadDelivery("cus_demo_02", "forged_signature")),
    Step(5.50, Join("cus_demo_10", "blaaiz")),
    Step(5.60, Upload("cus_demo_10", "id_file", "passport"), STUCK),
    Step(8.50, Join("cus_demo_11", "blaaiz")),
    Step(8.60, Upload("cus_demo_11", "id_file", "resident_permit")),
)

CONNECTFI: tuple[Step, ...] = (
    Step(0.05, Join("cf_cust_01", "connectfi", status="waiting_review")),
    Step(0.10, Upload("cf_cust_01", "passport")),
    Step(1.00, Says("cf_cust_01", "completed", "poll", outcome="Approved")),
    Step(0.10, Join("cf_cust_02", "connectfi", status="waiting_review")),
    Step(0.15, Upload("cf_cust_02", "license")),
    Step(1.20, Says("cf_cust_02", "completed", outcome="Denied")),
    Step(2.00, Says("cf_cust_02", "waiting_review", "poll"), "resubmits"),
    Step(2.00, Upload("cf_cust_02", "utility")),
    Step(3.50, Says("cf_cust_02", "completed", "poll", outcome="Approved"), "decided during the outage"),
    Step(0.15, Join("cf_cust_03", "connectfi", status="waiting_review")),
    Step(0.20, Upload("cf_cust_03", "passport")),
    Step(1.00, Says("cf_cust_03", "data_request", "poll")),
    Step(0.20, Join("cf_cust_04", "connectfi", status="waiting_review")),
    Step(0.25, Upload("cf_cust_04", "residence_permit"), STUCK),
    Step(0.25, Join("cf_cust_05", "connectfi", status="waiting_review")),
    Step(0.30, Upload("cf_cust_05", "passport"), STUCK),
    Step(4.00, Acknowledge("cf_cust_05", "overdue")),
    Step(0.30, Join("cf_cust_06", "connectfi", application=False), "no journey started yet"),
    Step(0.35, Join("cf_cust_07", "connectfi", status="waiting_review")),
    Step(0.40, Upload("cf_cust_07", "identification_card")),
    Step(1.40, Says("cf_cust_07", "completed", "poll", outcome="declined")),
    Step(0.40, Join("cf_cust_08", "connectfi", status="waiting_review")),
    Step(0.45, Upload("cf_cust_08", "passport"), "slow: approved during the outage"),
    Step(3.20, Says("cf_cust_08", "completed", "poll", outcome="Approved")),
    Step(3.00, Outage("connectfi", True)),
    Step(6.00, Outage("connectfi", False)),
    Step(6.50, BadDelivery("cf_cust_04", "missing_application")),
    Step(6.50, Join("cf_cust_09", "connectfi", status="waiting_review")),
    Step(6.60, Upload("cf_cust_09", "passport")),
    Step(9.00, Join("cf_cust_10", "connectfi", status="waiting_review")),
    Step(9.10, Upload("cf_cust_10", "license")),
)

CRYPTOPOCKET: tuple[Step, ...] = (
    Step(0.05, Join("usr_demo_01", "cryptopocket", status="processing")),
    Step(0.90, Says("usr_demo_01", "valid")),
    Step(0.10, Join("usr_demo_02", "cryptopocket", status="processing")),
    Step(1.40, Says("usr_demo_02", "valid", "poll")),
    Step(0.15, Join("usr_demo_03", "cryptopocket", status="processing")),
    Step(1.00, Says("usr_demo_03", "fail", "poll")),
    Step(2.00, Says("usr_demo_03", "processing"), "resubmits on CryptoPocket's page"),
    Step(3.20, Says("usr_demo_03", "valid")),
    Step(0.20, Join("usr_demo_04", "cryptopocket", status="processing")),
    Step(1.60, Says("usr_demo_04", "fail")),
    Step(0.25, Join("usr_demo_05", "cryptopocket", status="processing"), STUCK),
    Step(7.00, BadDelivery("usr_demo_05", "missing_status")),
    Step(0.30, Join("usr_demo_06", "cryptopocket", status="processing"), "slow: valid after its overdue alert"),
    Step(3.50, Says("usr_demo_06", "valid", "poll")),
    Step(0.35, Join("usr_demo_07", "cryptopocket", status="unused"), "has not opened the KYC form"),
    Step(0.60, Upload("usr_demo_07", "bank_statement")),
    Step(0.40, Join("usr_demo_08", "cryptopocket", status="processing")),
    Step(1.20, Says("usr_demo_08", "unused", "poll"), "CryptoPocket reopens the form"),
    Step(1.25, Operator("usr_demo_08", "needs_action", "source of funds unclear; asked for a bank statement")),
    Step(0.45, Join("usr_demo_09", "cryptopocket", status="processing")),
    Step(1.50, Says("usr_demo_09", "manual_review", "poll"), "a status CryptoPocket does not document"),
    Step(6.00, Join("usr_demo_10", "cryptopocket", status="unused")),
    Step(6.50, Says("usr_demo_10", "processing")),
    Step(9.20, Join("usr_demo_11", "cryptopocket", status="processing")),
)

END = 10.0  # scenario hours: the last step is before this


def schedule() -> list[Step]:
    """Every step in time order (steps at the same time in the order written)."""
    return sorted((*BLAAIZ, *CONNECTFI, *CRYPTOPOCKET), key=lambda step: step.at)


def providers() -> dict[str, str]:
    """Each customer's provider, from its Join."""
    return {step.action.who: step.action.provider for step in schedule() if isinstance(step.action, Join)}


def describe(action: Action, provider: str = "") -> str:
    """What a step does, in a few words (ids only)."""
    if isinstance(action, Join):
        kind = "" if action.customer_type == "individual" else f" ({action.customer_type})"
        return f"registers{kind}" + (" without an application" if not action.application else "")
    if isinstance(action, Upload):
        return f"uploads {action.slot}" + (f" ({action.document_type})" if action.document_type else "")
    if isinstance(action, Submit):
        return "submitted for review"
    if isinstance(action, Says):
        status = action.status + (f"/{action.outcome}" if action.outcome else "")
        told = "callback" if provider == "connectfi" else "webhook"
        return f"provider says {status}" + (f" ({told})" if action.via == "webhook" else " (found by polling)")
    if isinstance(action, BadDelivery):
        return f"bad delivery: {action.fault.replace('_', ' ')}"
    if isinstance(action, Outage):
        return "OUTAGE begins: every API call answers 503" if action.on else "outage ends: the API answers again"
    if isinstance(action, Acknowledge):
        return f"operator acknowledges the {action.kind} alert"
    return f"operator sets {action.state}: {action.reason}"
