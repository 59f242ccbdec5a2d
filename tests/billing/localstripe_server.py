"""Run localstripe (a stateful Stripe emulator) bound to 127.0.0.1 on a given port, for the tests.

Usage: ``python -m tests.billing.localstripe_server PORT``. Two adjustments to the emulator, none to the
Stripe SDK:
- localstripe 1.15 pickles its whole store to the fixed path ``/tmp/localstripe.pickle`` after every
  write, whatever TMPDIR says; concurrent test runs would overwrite each other's file, so this process
  keeps its state in memory only (it lives exactly as long as the test module that started it).
- localstripe only creates an invoice for a customer *with a subscription* ("No upcoming invoices for
  customer"), whereas Stripe creates a standalone invoice from the customer's pending invoice items
  (``pending_invoice_items_behavior=include``), which is what tenantq does. The patch routes that one
  case to localstripe's own ``Invoice`` constructor, which gathers the pending items itself.
"""

from __future__ import annotations

import sys

from aiohttp import web
from localstripe import resources


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
    **kwargs,
):
    if subscription is None and pending_invoice_items_behavior == "include" and not kwargs:
        return cls(customer=customer, description=description, metadata=metadata)
    return _original_create(
        cls,
        customer=customer,
        subscription=subscription,
        description=description,
        metadata=metadata,
        pending_invoice_items_behavior=pending_invoice_items_behavior,
        **kwargs,
    )


def main(port: int) -> None:
    resources.Store.dump_to_disk = _no_disk
    resources.Invoice._api_create = classmethod(_create_invoice)
    from localstripe.server import app

    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
