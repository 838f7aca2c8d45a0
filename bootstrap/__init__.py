"""Bootstrap for a self-hosted Temporal cluster secured with mTLS and JWT authorization."""

__version__ = "0.1.0"
