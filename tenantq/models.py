"""Every module that defines tables, imported in one place.

SQLAlchemy resolves a foreign key or relationship by table name when the first session flushes, so
``Base.metadata`` must be complete in every process whatever that process itself uses: beat, for one,
never touches workflows, yet a job row references the workflow table. ``core.db`` cannot import the
areas' models (it sits below them), so each entry point imports this module: the API app, the worker,
the CLI, Alembic's env.py and the tests. It sits above billing, the highest area with tables.
"""

from tenantq.billing.invoicing import models as invoicing
from tenantq.billing.usage import models as usage
from tenantq.core import audit
from tenantq.platform.jobs import models as jobs
from tenantq.platform.schedules import models as schedules
from tenantq.platform.webhooks import models as webhooks
from tenantq.platform.workflows import models as workflows
from tenantq.tenants.access import models as access
from tenantq.tenants.accounts import models as accounts

# Importing them is the point (it registers their tables); a new module with tables joins this list.
TABLE_MODULES = (audit, accounts, access, jobs, workflows, schedules, webhooks, usage, invoicing)
