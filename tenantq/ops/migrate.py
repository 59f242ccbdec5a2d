"""Run Alembic migrations shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.pricing import seed_prices
from tenantq.core.db import make_engine
from tenantq.core.settings import get_settings
from tenantq.tenants.accounts.service import seed_plans

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(PACKAGE_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(PACKAGE_DIR / "migrations"))
    cfg.attributes["database_url"] = database_url or get_settings().effective_database_url
    cfg.attributes["skip_logging"] = True
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    url = database_url or get_settings().effective_database_url
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
    # Seed data lives in code so plans can evolve without a migration per price change.
    engine = make_engine(url, statement_timeout=False)
    with Session(engine) as session:
        seed_plans(session)
        seed_prices(session)
        session.commit()
    engine.dispose()


def check(database_url: str | None = None) -> None:
    command.check(alembic_config(database_url))
