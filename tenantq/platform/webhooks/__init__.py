"""Completion webhooks: signed job events POSTed to tenant endpoints, retried, every attempt recorded."""
