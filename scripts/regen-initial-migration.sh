#!/usr/bin/env bash
# Until the first release, the schema ships as one initial migration. After changing models, run this
# from the repository root to regenerate it; `tenantq db check` in CI proves models and migration agree.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f tenantq/migrations/versions/*_0001_initial_schema.py
tmp="$(mktemp -d)/regen.db"
PYTHONPATH="$PWD" TENANTQ_DATABASE_URL="sqlite:///$tmp" python - <<'PY'
from alembic import command
from tenantq.ops.migrate import alembic_config
command.revision(alembic_config(), message="initial schema", autogenerate=True, rev_id="0001")
PY
sed -i 's/^Create Date: .*/Create Date: 2026-11-24/' tenantq/migrations/versions/*_0001_initial_schema.py
PYTHONPATH="$PWD" TENANTQ_DATABASE_URL="sqlite:///$tmp" python -m tenantq.cli db upgrade
PYTHONPATH="$PWD" TENANTQ_DATABASE_URL="sqlite:///$tmp" python -m tenantq.cli db check
