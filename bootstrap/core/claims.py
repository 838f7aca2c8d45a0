"""Names the token format shares with the config, kept apart from tokens.py so that reading
bundle.yaml does not load the JWT and crypto libraries."""

# The claim the server's claim mapper reads permissions from (permissionsClaimName). Dex puts a
# user's groups there, so Web UI logins and role tokens share it; role tokens also keep
# `permissions` for readers written before (and for humans reading a token).
PERMISSIONS_CLAIM = "groups"
