"""Enrollment: how a fresh machine becomes a runner of its pool, without a secret that
outlives its boot.

The autoscaler makes, per builder, a one-time enrollment token (``nfe_`` and 32
random bytes) and puts it, with the server's URL and nothing else, in the machine's
user data. The database keeps only its SHA-256 and an expiry a few minutes away
(``builders.enroll_seconds``). The machine, once booted, calls
``POST /api/v1/builders/enroll`` with it and gets its own runner token:

- bound to its pool: the pool's job images and trust, and, through its builder row
  (``builders.token_id``), the pool's arch, tags and caches at every claim
  (``nixfarm.builds.poolmatch``);
- it has only the ``runner`` scope: it pushes to a cache only with the per-job token
  a claim hands out, for the cache the job names, which the pool must allow;
- it expires after the pool's ``max_uptime_seconds`` (and a margin), and is revoked
  when the builder is destroyed.

The exchange is one conditional UPDATE (``enroll_hash = H AND enroll_expires_at > now
AND state = 'booting'`` -> hash cleared, ``ready``), so a token works once, even
against two servers racing; a used, expired or unknown token is the same 401.
User data can be read by anything on the machine and often by the provider's
metadata service long after boot: a token that is spent within minutes of boot is
worth nothing there.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "nfe_"


def new_token() -> tuple[str, str]:
    """A fresh enrollment token and the hash the database keeps."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
