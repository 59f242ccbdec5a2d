"""Every Redis key name lives in ``tenantq.core.keys``: a ``tq:`` string anywhere else in the package
fails here, so two modules can never spell the same key twice (or two keys the same way)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tenantq.core import keys
from tests.conftest import ROOT

PACKAGE = ROOT / "tenantq"
KEYS_MODULE = PACKAGE / "core" / "keys.py"
KEY = re.compile(r"(?<![A-Za-z0-9_])tq:")  # "tenantq:" is a cookie name, not a key


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (documentation may name keys)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def key_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string in ``path`` that contains ``tq:``, docstrings excepted. Covers
    f-string parts and Lua scripts held in Python strings."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and KEY.search(node.value)
        and id(node) not in docstrings
    ]


class TestOneModuleOwnsTheKeys:
    def test_no_key_string_outside_core_keys(self):
        found = {
            f"{path.relative_to(ROOT)}:{line}": text.strip()[:80]
            for path in sorted(PACKAGE.rglob("*.py"))
            if path != KEYS_MODULE
            for line, text in key_literals(path)
        }
        assert not found, f"Redis key strings outside tenantq/core/keys.py (define them there): {found}"

    def test_the_scan_sees_f_strings_and_lua(self, tmp_path):
        sample = tmp_path / "sample.py"
        sample.write_text(
            '"""Docs may say tq:paused."""\n'
            'A = f"tq:q:{1}"\n'
            "B = \"redis.call('SADD', 'tq:active', x)\"\n"
            'C = "tq.exec"\n'
            'D = "tenantq:dashboard"\n'
        )
        assert sorted(line for line, _text in key_literals(sample)) == [2, 3]

    def test_key_names_are_distinct(self):
        names = {n: v for n, v in vars(keys).items() if n.isupper() and isinstance(v, str)}
        values = list(names.values())
        assert len(set(values)) == len(values), names
        assert all(v.startswith("tq:") for v in values)


class TestLua:
    def test_placeholders_become_key_names(self):
        script = keys.lua("redis.call('SISMEMBER', '${PAUSED}', t); local q = '${QUEUE_PREFIX}' .. t")
        assert script == "redis.call('SISMEMBER', 'tq:paused', t); local q = 'tq:q:' .. t"

    def test_an_unknown_name_fails_at_import_time_not_in_redis(self):
        with pytest.raises(KeyError):
            keys.lua("redis.call('GET', '${NO_SUCH_KEY}')")


class TestKeyFunctions:
    def test_exact_strings_are_kept(self):
        # Stored data lives under these names: a change needs a data migration, not just an edit here.
        assert keys.queue_key("t1") == "tq:q:t1"
        assert keys.lease_key("t1") == "tq:cc:t1"
        assert keys.bucket_key("t1") == "tq:rl:t1"
        assert keys.wait_key("t1") == "tq:wait:t1"
        assert keys.started_key("j1", 2) == "tq:started:j1:2"
        assert keys.cancel_key("j1") == "tq:cancel:j1"
        assert keys.submit_bucket_key("t1") == "tq:rl:submit:t1"
        assert keys.auth_bucket_key("10.0.0.1") == "tq:rl:auth:10.0.0.1"
        assert keys.usage_attempt_key("j1") == "tq:usage:att:j1"
        assert keys.quota_jobs_key("t1", "2026-10") == "tq:quota:t1:2026-10:jobs"
        assert keys.quota_compute_key("t1", "2026-10") == "tq:quota:t1:2026-10:compute_ms"
        assert keys.quota_tenants_key("2026-10") == "tq:quota:tenants:2026-10"
