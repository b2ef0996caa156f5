"""Blaaiz (PROVIDERS.md, Blaaiz): the provider's name, its document rules, and every Blaaiz name the rest of the
tracker uses, importable from here. The parts live next door: webhook signatures in ``blaaiz_signature``,
webhook payloads in ``blaaiz_webhooks``, statuses and times in ``blaaiz_status``, the API client in
``blaaiz_client``.
"""

from __future__ import annotations

from tracker.providers.blaaiz_client import BlaaizAdapter
from tracker.providers.blaaiz_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, verify
from tracker.providers.blaaiz_status import NAME, STATUS_TRIGGERS, map_status, parse_time
from tracker.providers.blaaiz_webhooks import CUSTOMER_EVENTS, KEPT_FIELDS, fingerprint, parse, scrub

ID_TYPES_ACCEPTED = ("drivers_license", "passport", "resident_permit")
ID_TYPES_REFUSED = {"id_card": "national ID cards are not accepted by Blaaiz"}
UPLOAD_SLOTS = ("id_file", "id_file_back", "proof_of_address_file", "liveness_check_file")
REVIEW_STARTING_SLOT = "id_file"

__all__ = [
    "CUSTOMER_EVENTS",
    "ID_TYPES_ACCEPTED",
    "ID_TYPES_REFUSED",
    "KEPT_FIELDS",
    "NAME",
    "REVIEW_STARTING_SLOT",
    "SIGNATURE_HEADER",
    "STATUS_TRIGGERS",
    "TIMESTAMP_HEADER",
    "UPLOAD_SLOTS",
    "BlaaizAdapter",
    "SignatureError",
    "fingerprint",
    "map_status",
    "parse",
    "parse_time",
    "scrub",
    "sign",
    "verify",
]
