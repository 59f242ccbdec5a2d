"""Every module that defines tables, imported in one place.

SQLAlchemy resolves a foreign key or relationship by table name when the first session flushes, so
``Base.metadata`` must be complete in every process whatever that process itself uses: beat, for one,
never touches workflows, yet a job row references the workflow table. ``core.db`` cannot import the
areas' models (it sits below them), so each entry point imports this module: the API app, the worker,
the CLI, Alembic's env.py and the tests. It sits above billing, the highest area with tables.
"""

import tenantq.billing.invoicing.models  # noqa: F401
import tenantq.billing.usage.models  # noqa: F401
import tenantq.platform.jobs.models  # noqa: F401
import tenantq.platform.schedules.models  # noqa: F401
import tenantq.platform.webhooks.models  # noqa: F401
import tenantq.platform.workflows.models  # noqa: F401
import tenantq.tenants.access.models  # noqa: F401
import tenantq.tenants.accounts.models  # noqa: F401
