"""Run localstripe (a stateful Stripe emulator) bound to 127.0.0.1 on a given port, for the tests.

Usage: ``python -m tests.billing.localstripe_server PORT``. Adjustments to the emulator, none to the
Stripe SDK (each speaks Stripe's wire protocol: form-encoded requests, the same paths, the same JSON):
- localstripe 1.15 pickles its whole store to the fixed path ``/tmp/localstripe.pickle`` after every
  write, whatever TMPDIR says; concurrent test runs would overwrite each other's file, so this process
  keeps its state in memory only (it lives exactly as long as the test module that started it).
- localstripe only creates an invoice for a customer *with a subscription* ("No upcoming invoices for
  customer"), whereas Stripe creates a standalone invoice from the customer's pending invoice items
  (``pending_invoice_items_behavior=include``), which is what tenantq does. The patch routes that one
  case to localstripe's own ``Invoice`` constructor, which gathers the pending items itself. It also
  takes ``auto_advance``, ``collection_method`` and ``days_until_due`` as Stripe does.
- ``POST /v1/invoices/{id}/finalize`` (missing in localstripe): draft -> open, ``customer_email`` copied
  from the customer, ``invoice.finalized`` event; a second finalize answers 400 like Stripe.
- ``POST /v1/invoices/{id}/void``: localstripe's cancels a payment intent an invoice without one does
  not have (a 400); here a draft or open invoice is voided, an ``invoice.voided`` event is sent.
- Credit notes (missing in localstripe): ``POST /v1/credit_notes`` (``invoice``, ``lines`` of
  ``custom_line_item`` or ``amount``, ``reason``, ``memo``, ``metadata``, ``credit_amount`` /
  ``refund_amount`` / ``out_of_band_amount`` for a paid invoice), ``GET /v1/credit_notes/{id}``,
  ``GET /v1/credit_notes?invoice=``. An open invoice's ``amount_due`` drops by its credit notes; more
  than the invoice's remaining total is refused with 400, as Stripe does.
"""

from __future__ import annotations

import sys
import time

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook


def _no_disk(self) -> None:
    return None


_original_create = resources.Invoice._api_create.__func__


def _create_invoice(
    cls,
    customer=None,
    subscription=None,
    description=None,
    metadata=None,
    pending_invoice_items_behavior=None,
    auto_advance=None,
    collection_method=None,
    days_until_due=None,
    **kwargs,
):
    if subscription is None and pending_invoice_items_behavior == "include" and not kwargs:
        if collection_method not in (None, "charge_automatically", "send_invoice"):
            raise UserError(400, "Invalid collection_method")
        if collection_method == "send_invoice" and days_until_due is None:
            raise UserError(400, "days_until_due is required for send_invoice")
        invoice = cls(customer=customer, description=description, metadata=metadata)
        invoice.auto_advance = str(auto_advance).lower() == "true"
        invoice.collection_method = collection_method or "charge_automatically"
        invoice.days_until_due = int(days_until_due) if days_until_due is not None else None
        invoice.due_date = (
            invoice.created + 86400 * invoice.days_until_due if invoice.days_until_due is not None else None
        )
        invoice._credited = 0
        return invoice
    return _original_create(
        cls,
        customer=customer,
        subscription=subscription,
        description=description,
        metadata=metadata,
        pending_invoice_items_behavior=pending_invoice_items_behavior,
        **kwargs,
    )


def _finalize_invoice(id, auto_advance=None, **kwargs):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs))
    invoice = resources.Invoice._api_retrieve(id)
    if invoice.status != "draft":
        raise UserError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
    invoice._finalize()
    if auto_advance is not None:
        invoice.auto_advance = str(auto_advance).lower() == "true"
    schedule_webhook(resources.Event("invoice.finalized", invoice))
    return invoice


def _void_invoice(id, **kwargs):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs))
    invoice = resources.Invoice._api_retrieve(id)
    if invoice.status not in ("draft", "open"):
        raise UserError(400, f"You can only void an open invoice (this one is {invoice.status}).")
    invoice._draft = False
    invoice._voided = True
    invoice.auto_advance = False
    invoice.status_transitions["voided_at"] = int(time.time())
    schedule_webhook(resources.Event("invoice.voided", invoice))
    return invoice


def _amount_due(self):
    # Stripe: pre-payment credit notes lower what is still due on an open invoice.
    return max(0, self.total - getattr(self, "_credited", 0))


class CreditNote(resources.StripeObject):
    object = "credit_note"
    _id_prefix = "cn_"

    def __init__(
        self,
        invoice=None,
        lines=None,
        amount=None,
        reason=None,
        memo=None,
        metadata=None,
        credit_amount=None,
        refund_amount=None,
        out_of_band_amount=None,
        **kwargs,
    ):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        if not isinstance(invoice, str) or not invoice.startswith("in_"):
            raise UserError(400, "invoice is required")
        inv = resources.Invoice._api_retrieve(invoice)
        if inv.status not in ("open", "paid"):
            raise UserError(400, f"You can only credit an open or paid invoice (this one is {inv.status}).")
        reasons = (None, "duplicate", "fraudulent", "order_change", "product_unsatisfactory")
        if reason not in reasons:
            raise UserError(400, "Invalid reason")
        total = 0
        exported = []
        for line in lines or []:
            if line.get("type") != "custom_line_item":
                raise UserError(400, "Only custom_line_item lines are supported here")
            quantity = int(line.get("quantity", 1))
            unit_amount = int(line["unit_amount"])
            if quantity < 1 or unit_amount < 0:
                raise UserError(400, "Invalid line")
            total += quantity * unit_amount
            exported.append(
                {
                    "object": "credit_note_line_item",
                    "type": "custom_line_item",
                    "description": line.get("description"),
                    "quantity": quantity,
                    "unit_amount": unit_amount,
                    "amount": quantity * unit_amount,
                }
            )
        if amount is not None:
            if exported:
                raise UserError(400, "Pass either amount or lines")
            total = int(amount)
        if total <= 0:
            raise UserError(400, "A credit note needs a positive amount")
        if inv.status == "paid":
            parts = [int(v) for v in (credit_amount, refund_amount, out_of_band_amount) if v is not None]
            if sum(parts) != total:
                raise UserError(
                    400,
                    "For a paid invoice, credit_amount + refund_amount + out_of_band_amount must equal the "
                    "credit note's total",
                )
        credited = getattr(inv, "_credited", 0)
        if credited + total > inv.total:
            raise UserError(400, "The credit note's total exceeds the invoice's remaining amount")
        super().__init__()
        pre_payment = inv.status == "open"
        inv._credited = credited + total
        self.invoice = invoice
        self.customer = inv.customer
        self.currency = inv.currency
        self.amount = total
        self.total = total
        self.subtotal = total
        self.reason = reason
        self.memo = memo
        self.metadata = metadata or {}
        self.status = "issued"
        self.type = "pre_payment" if pre_payment else "post_payment"
        self.lines = {"object": "list", "data": exported, "has_more": False}
        schedule_webhook(resources.Event("credit_note.created", self))

    @classmethod
    def _api_list_all(cls, url, invoice=None, limit=None, starting_after=None, **kwargs):
        listing = super()._api_list_all(url, limit=limit, starting_after=starting_after, **kwargs)
        if invoice is not None:
            listing._list = [cn for cn in listing._list if cn.invoice == invoice]
        return listing


def _create_credit_note(**data):
    return CreditNote(**data)


def _retrieve_credit_note(id, **kwargs):
    return CreditNote._api_retrieve(id)


def _list_credit_notes(**data):
    return CreditNote._api_list_all("/v1/credit_notes", **data)


def main(port: int) -> None:
    resources.Store.dump_to_disk = _no_disk
    resources.Invoice._api_create = classmethod(_create_invoice)
    resources.Invoice.amount_due = property(_amount_due)
    # Replace localstripe's void route (one route per method and path), add the missing ones.
    resources.extra_apis[:] = [r for r in resources.extra_apis if r[:2] != ("POST", "/v1/invoices/{id}/void")]
    resources.extra_apis[:0] = [
        ("POST", "/v1/invoices/{id}/finalize", _finalize_invoice),
        ("POST", "/v1/invoices/{id}/void", _void_invoice),
        ("POST", "/v1/credit_notes", _create_credit_note),
        ("GET", "/v1/credit_notes/{id}", _retrieve_credit_note),
        ("GET", "/v1/credit_notes", _list_credit_notes),
    ]
    from localstripe.server import app

    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
