"""Finish hooks: what else happens when an attempt reaches its final outcome (succeeded or failed).

The job platform does not know the areas that react to a finished job: workflows start their next
step, webhooks record deliveries. Each subscribes here with one :class:`FinishHook`, registered at
assembly (``tenantq.worker.main``), so jobs never import them and the order is this list's order.

A hook can take part in two places:
- inside the transaction that applies the outcome (``lifecycle``), for the messages it ``claims``:
  ``lock`` runs before the job row is touched (so concurrent finishers serialise on the hook's own
  row, e.g. a workflow), ``in_transaction`` after the job row moved; what it returns runs after the
  commit. The outcome and the hook's work commit together or not at all.
- after the commit (``after_commit``), called by the worker's attempt pipeline. ``probe`` gives an SQL
  condition evaluated in the status statement itself ("does this tenant have anything for this
  hook?"), so that a hook with nothing to do costs no round trip of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.orm import Session

from tenantq.platform.jobs.messages import JobMessage

log = logging.getLogger("tenantq.jobs.hooks")


@dataclass(frozen=True)
class AttemptOutcome:
    """An attempt's final outcome, as the status transaction applied it."""

    message: JobMessage
    status: Literal["succeeded", "failed"]
    error: str | None = None
    # Hook name -> its probe's answer in the status statement. A hook missing here was not probed
    # (another path finished the attempt, or the tenant row was not found): it must look for itself.
    probes: Mapping[str, bool] = field(default_factory=dict)

    def concerns(self, hook: str) -> bool:
        """False only when the status statement saw that the hook has nothing to do."""
        return self.probes.get(hook, True)


@dataclass(frozen=True)
class FinishHook:
    name: str
    claims: Callable[[JobMessage], bool] | None = None
    lock: Callable[[Session, JobMessage], None] | None = None
    in_transaction: Callable[[Session, AttemptOutcome], Callable[[], None] | None] | None = None
    # tenant id (an SQL expression) -> SQL boolean expression.
    probe: Callable[[Any], Any] | None = None
    after_commit: Callable[[AttemptOutcome], None] | None = None


_HOOKS: list[FinishHook] = []


def on_attempt_finished(hook: FinishHook) -> FinishHook:
    """Subscribe ``hook``; subscribing the same name again replaces it (assembly may run twice)."""
    for i, existing in enumerate(_HOOKS):
        if existing.name == hook.name:
            _HOOKS[i] = hook
            return hook
    _HOOKS.append(hook)
    return hook


def claiming(message: JobMessage) -> list[FinishHook]:
    """The hooks that must run inside this message's status transaction."""
    return [h for h in _HOOKS if h.claims is not None and h.claims(message)]


def probing() -> list[FinishHook]:
    return [h for h in _HOOKS if h.probe is not None]


def run_after_commit(outcome: AttemptOutcome) -> None:
    """Every hook's after-commit part, in subscription order. Never raises: a hook's failure must
    not disturb the attempt nor the hooks after it."""
    for hook in _HOOKS:
        if hook.after_commit is None:
            continue
        try:
            hook.after_commit(outcome)
        except Exception:
            log.exception("finish hook %s failed for job %s", hook.name, outcome.message.id)
