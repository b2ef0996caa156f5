"""Alert channels, one module each behind one Protocol (``base.Channel``)."""
