"""tracker: follows KYC/KYB verifications at several providers and alerts operations when one is stuck."""

__version__ = "0.1.0"
