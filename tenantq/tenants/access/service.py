"""API key operations: create, revoke, rotate. Shared by the key API, the operator API, the CLI and tests.

Functions take the session explicitly and flush; the caller commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from tenantq.core.db import utcnow
from tenantq.core.errors import Conflict, InvalidInput
from tenantq.core.settings import get_settings
from tenantq.tenants.access.keys import ALL_SCOPES, generate_key, hash_key
from tenantq.tenants.access.models import ApiKey
from tenantq.tenants.accounts.models import Tenant
from tenantq.tenants.accounts.service import get_tenant


def create_api_key(
    session: Session,
    *,
    tenant: Tenant,
    scopes: list[str] | None = None,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full secret key (shown once, never stored)."""
    scopes = list(dict.fromkeys(scopes)) if scopes else list(ALL_SCOPES)
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise InvalidInput(
            f"Unknown scopes: {', '.join(unknown)}.",
            code="unknown_scope",
            details={"allowed": list(ALL_SCOPES)},
        )
    name = name.strip()
    if len(name) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput("Key name must be at most 128 printable characters.")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future.", code="invalid_expiry")
    settings = get_settings()
    full, kid, prefix = generate_key(settings.env)
    row = ApiKey(
        id=kid,
        tenant_id=tenant.id,
        prefix=prefix,
        secret_hash=hash_key(full, settings.secret_key),
        name=name,
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, full


def revoke_key(session: Session, key: ApiKey) -> ApiKey:
    """Revoke now. Authentication reads the row on every request (no cache), so every API process
    rejects the key from the next request on. Idempotent: the first revocation time is kept."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def rotate_key(session: Session, key: ApiKey, *, grace_seconds: int) -> tuple[ApiKey, str]:
    """Issue a replacement with the same name, scopes and expiry; the old key keeps working for
    ``grace_seconds`` (``expires_at = now + grace``, never later than its own expiry)."""
    now = utcnow()
    if key.revoked_at is not None:
        raise Conflict("A revoked key cannot be rotated.", code="key_revoked", details={"id": key.id})
    if key.expires_at is not None and key.expires_at <= now:
        raise Conflict("An expired key cannot be rotated.", code="key_expired", details={"id": key.id})
    tenant = get_tenant(session, key.tenant_id)
    new_row, full = create_api_key(
        session, tenant=tenant, scopes=list(key.scopes or ()), name=key.name, expires_at=key.expires_at
    )
    grace_end = now + timedelta(seconds=grace_seconds)
    if key.expires_at is None or grace_end < key.expires_at:
        key.expires_at = grace_end
    session.flush()
    return new_row, full
