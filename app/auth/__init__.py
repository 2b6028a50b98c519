"""Caller authentication that needs I/O: the OIDC signing keys, fetched and cached.

The verification itself is pure and lives in `app/security/`; this package feeds it keys.
"""
