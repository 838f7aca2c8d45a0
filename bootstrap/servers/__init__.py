"""The HTTPS services the bundle runs: the JWKS server and the codec server."""
