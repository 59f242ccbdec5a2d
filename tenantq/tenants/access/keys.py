"""API key format, generation and verification.

A key looks like ``tq_live_<kid>_<secret><check>``:
- ``kid``: 12 base62 characters, the public key id (primary key of ``api_key``);
- ``secret``: 32 base62 characters (~190 bits of entropy);
- ``check``: 6 base62 characters of CRC32 over everything before it, so a mistyped key is rejected
  without touching the database.
The database stores HMAC-SHA256(server secret, full key); comparison is constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from dataclasses import dataclass

ALPHABET = string.digits + string.ascii_letters
PREFIXES = ("tq_live_", "tq_test_")
KID_LEN = 12
SECRET_LEN = 32
CHECK_LEN = 6

ALL_SCOPES = ("jobs:write", "jobs:read", "usage:read", "billing:read", "keys:manage")


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _random_b62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode()), CHECK_LEN)


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    kid: str
    full: str


def generate_key(env: str = "live") -> tuple[str, str, str]:
    """Return (full_key, key_id, prefix)."""
    prefix = "tq_test_" if env == "test" else "tq_live_"
    kid = _random_b62(KID_LEN)
    body = f"{prefix}{kid}_{_random_b62(SECRET_LEN)}"
    return body + _checksum(body), kid, prefix


def parse_key(raw: str) -> ParsedKey | None:
    """Structural + checksum check; None when the string cannot be a tenantq key."""
    if not isinstance(raw, str) or len(raw) > 128:
        return None
    prefix = next((p for p in PREFIXES if raw.startswith(p)), None)
    if prefix is None:
        return None
    rest = raw[len(prefix) :]
    if len(rest) != KID_LEN + 1 + SECRET_LEN + CHECK_LEN or rest[KID_LEN] != "_":
        return None
    if any(c not in ALPHABET for c in rest.replace("_", "", 1)):
        return None
    body, check = raw[:-CHECK_LEN], raw[-CHECK_LEN:]
    if not hmac.compare_digest(_checksum(body), check):
        return None
    return ParsedKey(prefix=prefix, kid=rest[:KID_LEN], full=raw)


def hash_key(full_key: str, server_secret: str) -> str:
    return hmac.new(server_secret.encode(), full_key.encode(), hashlib.sha256).hexdigest()


def verify_hash(full_key: str, stored_hash: str, server_secret: str) -> bool:
    return hmac.compare_digest(hash_key(full_key, server_secret), stored_hash)
