"""The HTTP API, settings, database, jobs, schedules and dashboards."""
