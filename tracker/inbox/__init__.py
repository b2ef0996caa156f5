"""Inbound provider events: stored first (``store``), applied after (``applier``)."""
