"""CLI start-up: how long `tenantq --help`, `tenant list` and `key create` take, each in a fresh process.

    python -m bench.cli_startup             # 15 runs per command
    python -m bench.cli_startup -n 30 --label before

Every command runs ``python -m tenantq.cli ...`` (the console script adds only its own tiny shim)
against a scratch data dir that is migrated and holds one tenant before timing starts, so the figures
are the steady state of a newcomer's second command, not the one-off migration. ``python -c pass`` runs
the same number of times in the same loop: the ratio to it says how much slower than a bare
interpreter a command is, which stays comparable between a quiet and a loaded machine. The CPU time
(user + system) each command used is reported too: on a loaded machine the wall time mostly measures
the wait for a core, the CPU time much less so. Targets (issue 15, quiet machine, wall time):
``--help`` under 0.3 s, ``tenant list`` and ``key create`` under 1 s.

It times the tenantq that ``python -m tenantq.cli`` finds from the current directory: run it from the
checkout to measure (for old code, ``cd`` into a worktree of it and run this file by path).

Prints median and p90 per command and writes the figures to ``bench/results/cli-startup-<ts>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS_S = {"--help": 0.3, "tenant list": 1.0, "key create": 1.0}


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run: children are reaped one at a time, so the growth of
    RUSAGE_CHILDREN across the run is this child's CPU time."""
    cpu_before = _cpu_of_children()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return elapsed, _cpu_of_children() - cpu_before


def _p90(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--label", default="", help="a tag stored in the JSON, e.g. before/after")
    args = parser.parse_args()

    env = dict(os.environ)
    # The embedded store, whatever the caller's shell points at: the figure is the newcomer's setup.
    for var in ("TENANTQ_DATABASE_URL", "TENANTQ_REDIS_URL"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "tenantq.cli"]
    with tempfile.TemporaryDirectory(prefix="tq-cli-bench-") as data_dir:
        env["TENANTQ_DATA_DIR"] = data_dir
        _run([*cli, "tenant", "create", "bench-tenant"], env)  # migrates the scratch database once
        commands: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [*cli, "--help"],
            "tenant list": [*cli, "tenant", "list"],
            "key create": [*cli, "key", "create", "bench-tenant"],
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        # Round-robin, so a burst of load elsewhere hits every command alike rather than one of them.
        for _ in range(args.runs):
            for name, argv in commands.items():
                wall_s, cpu_s = _run(argv, env)
                samples[name].append(wall_s)
                cpu[name].append(cpu_s)

    base = statistics.median(samples["python -c pass"])
    rows = {}
    print(f"{'command':<16} {'median s':>9} {'p90 s':>7} {'x python':>9} {'cpu s':>7} {'target s':>9}")
    for name, xs in samples.items():
        med = statistics.median(xs)
        target = TARGETS_S.get(name)
        rows[name] = {
            "median_s": round(med, 4),
            "p90_s": round(_p90(xs), 4),
            "ratio_to_python": round(med / base, 2),
            "cpu_median_s": round(statistics.median(cpu[name]), 4),
            "target_s": target,
            "samples_s": [round(x, 4) for x in xs],
            "cpu_samples_s": [round(x, 4) for x in cpu[name]],
        }
        shown_target = f"{target:.1f}" if target is not None else "-"
        print(
            f"{name:<16} {med:>9.3f} {_p90(xs):>7.3f} {med / base:>9.1f}"
            f" {statistics.median(cpu[name]):>7.3f} {shown_target:>9}"
        )

    load1 = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load1:.2f}, cpus: {os.cpu_count()}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"cli-startup-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "bench": "cli_startup",
                "label": args.label,
                "runs": args.runs,
                "python": sys.version.split()[0],
                "loadavg_1m": round(load1, 2),
                "cpus": os.cpu_count(),
                "commands": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
