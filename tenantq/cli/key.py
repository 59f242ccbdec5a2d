"""``tenantq key``: create, list and revoke tenants' API keys."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tenantq.cli.common import DataDir, JsonOut, cli_session, emit, note_if_empty

app = typer.Typer(help="Create, list and revoke tenants' API keys.", no_args_is_help=True)


@app.command("list")
def key_list(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List TENANT's API keys (ids, names, scopes, timestamps; never the secrets)."""
    from tenantq.tenants.access.repository import ApiKeyRepository
    from tenantq.tenants.access.schemas import KeyOut
    from tenantq.tenants.accounts.service import get_tenant_by_ref

    with cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        rows = [
            KeyOut.model_validate(k).model_dump(mode="json") for k in ApiKeyRepository(session, t.id).list()
        ]
    note_if_empty(rows, f"API keys for {tenant}")
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            state = (
                "revoked"
                if r["revoked_at"]
                else (f"expires {r['expires_at']}" if r["expires_at"] else "active")
            )
            typer.echo(
                f"{r['id']}  {r['name'] or '-'}  {','.join(r['scopes'])}  {state}"
                f"  last used {r['last_used_at'] or 'never'}"
            )


@app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (the part after tq_live_/tq_test_).")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key now: every API process rejects it from its next request."""
    from tenantq.core.errors import NotFound
    from tenantq.tenants.access.models import ApiKey
    from tenantq.tenants.access.service import revoke_key

    with cli_session(data_dir, as_json) as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"No API key with id {key_id!r}.")
        revoke_key(session, key)
        assert key.revoked_at is not None  # revoke_key sets it
        payload = {"id": key.id, "tenant_id": key.tenant_id, "revoked_at": key.revoked_at.isoformat()}
    emit(as_json, payload, f"revoked {payload['id']} at {payload['revoked_at']}")


@app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    scopes: Annotated[str | None, typer.Option(help="Comma-separated scopes (default: all).")] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from tenantq.tenants.access.service import create_api_key
    from tenantq.tenants.accounts.service import get_tenant_by_ref

    with cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        scope_list = [s.strip() for s in scopes.split(",") if s.strip()] if scopes else None
        row, full = create_api_key(session, tenant=t, scopes=scope_list, name=name)
        payload = {"id": row.id, "key": full, "tenant_id": t.id, "scopes": row.scopes}
    emit(as_json, payload, f"{payload['key']}\n(key id {payload['id']}; shown once, store it now)")
