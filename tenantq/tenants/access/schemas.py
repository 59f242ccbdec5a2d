"""Request and response bodies of the key and session API (``/v1/keys``, ``/v1/auth/session``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator

from tenantq.core.text_checks import SafeRequest, SafeResponse
from tenantq.tenants.access.keys import ALL_SCOPES
from tenantq.tenants.accounts.schemas import clean_name

# A scope in a request: one of ALL_SCOPES (published as an enum; the validator below names the unknown).
Scope = Annotated[str, Field(json_schema_extra={"enum": list(ALL_SCOPES)})]
MAX_GRACE_SECONDS = 30 * 24 * 3600


def _check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; allowed: {list(ALL_SCOPES)}")
    # Keep the caller's order but drop duplicates.
    return list(dict.fromkeys(scopes))


# ---------------------------------------------------------------------------------------------- keys
class KeyCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ci deploys",
                    "scopes": ["jobs:read", "jobs:write"],
                    "expires_at": "2027-06-30T00:00:00Z",
                }
            ]
        },
    )

    name: str = Field(default="", max_length=128, description="A label for the key (any printable text).")
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=len(ALL_SCOPES) * 2,
        description=f"Scopes of the new key, a subset of the caller's own. Known: {', '.join(ALL_SCOPES)}.",
    )
    # Aware only: a naive time has no meaning across zones, and comparing it with now() would fail.
    expires_at: AwareDatetime | None = Field(
        default=None, description="Optional expiry: ISO 8601 with a zone offset (e.g. `Z`), in the future."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return clean_name(v)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        return _check_scopes(v)


class KeyRotate(SafeRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"grace_seconds": 3600}]})

    grace_seconds: StrictInt = Field(
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long the old key keeps working (0 = stop now). Its expires_at becomes now + grace.",
    )


class KeyOut(SafeResponse):
    model_config = ConfigDict(from_attributes=True)

    id: str
    prefix: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The full secret key. Shown once: only its keyed hash is stored.")


class KeyList(BaseModel):
    items: list[KeyOut]


# ------------------------------------------------------------------------------------------ sessions
class SessionCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"api_key": "tq_live_6ZJ6SetEDUMM_K0ocYfjgsO679YxxR7OxuuSXiEpp6ffC4iWvSQ"}]
        },
    )

    api_key: str | None = Field(default=None, max_length=128, description="Alternative to the bearer header.")


class SessionOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: datetime
