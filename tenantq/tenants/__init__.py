"""Tenants, plans, API keys and authentication."""
