"""Celery configuration derived from settings: the broker visibility timeout and its restore sweep."""

from __future__ import annotations

from tenantq.core.celery import MAX_TIME_LIMIT_S, _restore_sweep, create_celery
from tenantq.core.settings import reset_settings_cache


class TestVisibilityTimeout:
    def test_default_exceeds_every_time_limit_and_keeps_kombus_sweep(self):
        app = create_celery()
        options = app.conf.broker_transport_options
        assert options["visibility_timeout"] > MAX_TIME_LIMIT_S
        assert (
            app.conf.result_backend_transport_options["visibility_timeout"] == options["visibility_timeout"]
        )
        assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (10, 10)
        assert options["unacked_mutex_expire"] == 300

    def test_setting_shortens_redelivery_and_the_sweep_with_it(self, monkeypatch):
        monkeypatch.setenv("TENANTQ_VISIBILITY_TIMEOUT_SECONDS", "15")
        reset_settings_cache()
        try:
            options = create_celery().conf.broker_transport_options
        finally:
            monkeypatch.delenv("TENANTQ_VISIBILITY_TIMEOUT_SECONDS")
            reset_settings_cache()
        assert options["visibility_timeout"] == 15
        # Swept every 3 s (not kombu's 100 s), and a mutex left by a killed worker blocks at most 15 s.
        assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == 3
        assert options["unacked_mutex_expire"] == 15

    def test_sweep_period_is_bounded(self):
        assert _restore_sweep(1) == {
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 5,
        }
        sweep = _restore_sweep(60)
        assert sweep["unacked_restore_interval"] * sweep["unacked_restore_throttle"] <= 12

    def test_running_attempts_survive_a_broker_connection_loss(self):
        assert create_celery().conf.worker_cancel_long_running_tasks_on_connection_loss is False
