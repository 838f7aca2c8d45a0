"""The HTTPS services the bundle runs: the JWKS server and the codec server.

Nothing here imports aiohttp: the CLI imports this package for its defaults, and every other
command should not pay for the HTTP stack."""

MAX_CONNECTIONS = 1024
