"""Request and response bodies of the invoice, price, period and priced usage report APIs.

Money is a string of a Decimal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

from tenantq.billing.invoicing.models import Invoice, PlanPrice
from tenantq.billing.invoicing.pricing import PRICED_METRICS, included_units, round_amount
from tenantq.core.periods import PERIOD_PATTERN
from tenantq.core.text_checks import SafeRequest


def plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 0.0004, 11345.678, 100."""
    return f"{Decimal(value).normalize():f}"


class InvoiceLineOut(BaseModel):
    metric: str = Field(description="base_fee, jobs, attempts, compute_seconds or wall_seconds.")
    description: str
    quantity: str
    unit_price: str
    amount: str = Field(description="quantity x unit_price, rounded half-up to the currency's minor unit.")


class InvoiceOut(BaseModel):
    id: str
    period: str = Field(description="Calendar month (UTC), YYYY-MM.")
    status: Literal["open", "paid", "void"]
    currency: str
    total: str = Field(description="Sum of the line amounts.")
    lines: list[InvoiceLineOut]
    issued_at: datetime
    paid_at: datetime | None = None
    revision: int = Field(description="1 for the invoice a period close issued; +1 per void-and-reissue.")
    voided_at: datetime | None = None
    void_reason: str | None = None
    replaced_by_id: str | None = Field(description="The invoice that replaced this void one, if reissued.")

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceOut:
        cur = invoice.currency
        return cls(
            id=invoice.id,
            period=invoice.period,
            status=invoice.status,
            currency=cur,
            revision=invoice.revision,
            voided_at=invoice.voided_at,
            void_reason=invoice.void_reason,
            replaced_by_id=invoice.replaced_by_id,
            total=str(round_amount(Decimal(invoice.total), cur)),
            lines=[
                InvoiceLineOut(
                    metric=line.metric,
                    description=line.description,
                    quantity=plain(line.quantity),
                    unit_price=plain(line.unit_price),
                    amount=str(round_amount(Decimal(line.amount), cur)),
                )
                for line in invoice.lines
            ],
            issued_at=invoice.issued_at,
            paid_at=invoice.paid_at,
        )


class VoidIn(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "price corrected after close", "reissue": True}]},
    )

    reason: str = Field(min_length=1, max_length=255, description="Why the invoice is voided (audited).")
    reissue: StrictBool = Field(
        default=False,
        description="Issue the next revision at once, re-rated from the period's billed usage with the "
        "prices and plan in force now.",
    )


class StripeOutcome(BaseModel):
    configured: bool = Field(description="False when Stripe is not configured: nothing was pushed.")
    status: str | None = Field(default=None, description="Stripe's status of the voided invoice.")
    reissued_stripe_invoice_id: str | None = None
    credit_note_id: str | None = None
    error: str | None = Field(
        default=None, description="Why the Stripe push failed; the correction stands, retry with stripe-sync."
    )


class VoidOut(BaseModel):
    voided: InvoiceOut
    reissued: InvoiceOut | None
    stripe: StripeOutcome


class CreditNoteIn(SafeRequest):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"amount": "12.50", "reason": "outage credit"}]}
    )

    amount: Decimal = Field(gt=0, max_digits=20, decimal_places=4, description="In the invoice's currency.")
    reason: str = Field(min_length=1, max_length=255, description="Shown on the credit note (audited).")


class CreditNoteOut(BaseModel):
    id: str
    invoice_id: str
    tenant_id: str
    currency: str
    amount: str
    reason: str
    created_at: datetime
    created_by: str
    stripe_credit_note_id: str | None
    invoice: InvoiceOut
    invoice_credited: str = Field(description="All credit notes of the invoice, this one included.")
    stripe: StripeOutcome


class InvoiceList(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None = None


class BillingPeriodOut(BaseModel):
    period: str
    status: str
    starts_at: datetime
    ends_at: datetime
    closed_at: datetime
    closed_by: str
    forced: bool
    invoice_count: int
    event_count: int
    late_event_count: int

    model_config = ConfigDict(from_attributes=True)


class BillingPeriodsOut(BaseModel):
    items: list[BillingPeriodOut]
    due: list[str] = Field(description="Ended months past their grace window, not closed yet.")
    grace_seconds: int


class CloseIn(SafeRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"period": "2026-10"}]})

    # The shape is checked here (422 invalid_input), the range by Period.parse (422 invalid_period); the
    # document publishes both in one pattern.
    period: str = Field(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
        description="YYYY-MM (UTC calendar month, 1970-01 to 9998-12).",
        examples=["2026-10"],
        json_schema_extra={"pattern": PERIOD_PATTERN},
    )
    force: StrictBool = Field(default=False, description="Close before the grace window has passed.")


class CloseOut(BaseModel):
    period: BillingPeriodOut
    created: bool = Field(description="False when the period was already closed (nothing changed).")
    also_closed: list[str] = Field(
        default_factory=list, description="Earlier open months this call closed first, oldest first."
    )
    invoices: list[InvoiceOut]

    @classmethod
    def of(cls, result) -> CloseOut:
        return cls(
            period=BillingPeriodOut.model_validate(result.period),
            created=result.created,
            also_closed=result.also_closed,
            invoices=[InvoiceOut.of(i) for i in result.invoices],
        )


class TierIn(SafeRequest):
    model_config = ConfigDict(extra="forbid")

    up_to: Decimal | None = Field(
        default=None, gt=0, description="Upper bound in billable units; null = unbounded."
    )
    unit_price: Decimal = Field(ge=0)


class PriceIn(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "included_units": "1000",
                    "description": "Jobs",
                    "tiers": [
                        {"up_to": "100000", "unit_price": "0.001"},
                        {"up_to": None, "unit_price": "0.0005"},
                    ],
                }
            ]
        },
    )

    included_units: Decimal | None = Field(
        default=None,
        ge=0,
        description="Free units per period; null = the plan's quota for jobs/compute seconds.",
    )
    tiers: list[TierIn] = Field(min_length=1, max_length=20)
    description: str = Field(default="", max_length=128)
    effective_from: AwareDatetime | None = Field(
        default=None,
        description="When this version takes effect (ISO 8601 with a zone; default: now). Usage is rated by "
        "the version in force when it occurred; issued invoices never change.",
    )


class TierOut(BaseModel):
    up_to: str | None
    unit_price: str


class PriceOut(BaseModel):
    plan: str
    metric: str
    included_units: str = Field(description="Effective included units per period.")
    included_from_plan: bool
    description: str
    tiers: list[TierOut]
    effective_from: datetime = Field(description="When this version took (or takes) effect.")

    @classmethod
    def of(cls, price: PlanPrice, plan) -> PriceOut:
        return cls(
            plan=price.plan_name,
            metric=price.metric,
            effective_from=price.effective_from,
            included_units=plain(included_units(plan, price)),
            included_from_plan=price.included_units is None,
            description=price.description,
            tiers=[
                TierOut(up_to=plain(t.up_to) if t.up_to is not None else None, unit_price=plain(t.unit_price))
                for t in price.tiers
            ],
        )


class PriceList(BaseModel):
    items: list[PriceOut]
    metrics: list[str] = Field(default_factory=lambda: list(PRICED_METRICS))


# --- Priced usage report (``/v1/usage/report``) ---------------------------------------------------


class UsageFigures(BaseModel):
    """Quantities and amounts are decimal strings (seconds to the millisecond, charges to the cent)."""

    jobs: int
    attempts: int
    compute_seconds: str
    wall_seconds: str
    charges: str


class UsageReportRow(BaseModel):
    key: str = Field(description="Task type or UTC day (YYYY-MM-DD), per group_by.")
    jobs: int
    attempts: int
    compute_seconds: str
    wall_seconds: str
    charges: str


class UsageReportTotals(UsageFigures):
    usage_charges: str = Field(description="Usage charges: the sum of the rows' charges.")
    fixed_charges: str = Field(description="Fixed fees of the period (not spread over rows).")
    total_charges: str = Field(
        description="Grand total: usage plus fixed charges. For a closed period, its invoice's total."
    )


class FixedCharge(BaseModel):
    description: str
    amount: str


class UsageReport(BaseModel):
    period: str
    group_by: Literal["task", "day"]
    currency: str | None
    priced: bool
    closed: bool = Field(description="True once the period is closed: charges are read from the invoice.")
    invoice_id: str | None = Field(description="The invoice the charges are read from (closed periods).")
    rows: list[UsageReportRow]
    fixed: list[FixedCharge] = Field(description="Fixed charges (the plan's base fee), one per line.")
    totals: UsageReportTotals


# --- Operator usage report (``/admin/v1/reports/usage``) -------------------------------------------


class TenantUsageRow(UsageFigures):
    tenant_id: str
    tenant: str
    plan: str


class PlanRevenue(BaseModel):
    plan: str
    currency: str | None = None
    tenants: int
    revenue: str = Field(description="Decimal string, to the cent.")


class OperatorUsageTotals(BaseModel):
    jobs: int
    attempts: int
    compute_seconds: str
    wall_seconds: str
    tenants: int
    revenue: dict[str, str] = Field(description="Revenue per currency (decimal strings, to the cent).")


class OperatorUsageReport(BaseModel):
    period: str
    priced: bool
    rows: list[TenantUsageRow]
    revenue_by_plan: list[PlanRevenue]
    totals: OperatorUsageTotals


# --- Stripe webhook -------------------------------------------------------------------------------


class StripeEventAck(BaseModel):
    received: bool
    id: str = Field(description="The Stripe event id.")
    duplicate: bool = Field(description="The event was received before; nothing changed.")
    processed: bool = Field(description="The event has been applied (else its task will apply it).")


# --- Audit log and billing settings ---------------------------------------------------------------


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    tenant_id: str | None
    before: dict | None
    after: dict | None


class AuditList(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = None


class BillingSettings(BaseModel):
    billing_email: str | None


class BillingSettingsIn(SafeRequest):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"billing_email": "billing@example.com"}]}
    )

    billing_email: str | None = Field(
        max_length=254, description='Where invoices are emailed; null or "" clears it.'
    )
