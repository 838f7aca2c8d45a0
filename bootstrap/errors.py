class BundleError(Exception):
    """An operator-facing failure: printed once by the CLI as `error: <message>`, exit 1."""
