"""Per-tenant schedules: periodic jobs (cron or interval) stored in SQL and fired by beat."""
