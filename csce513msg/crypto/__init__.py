"""Cryptography for csce513Msg, on ``cryptography`` primitives only.

For now: the server's TLS certificate (``certs``). The end-to-end scheme comes
with its own issue; docs/security.md states the threat model.
"""
