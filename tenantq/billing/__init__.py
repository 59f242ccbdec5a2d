"""Usage metering, quotas, pricing, invoices, reports and Stripe sync."""
