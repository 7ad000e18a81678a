"""Run every benchmark, then regenerate the report from the results (``make bench``).

Full mode writes ``bench/results/*.json``, ``bench/plots/*.png`` and ``BENCHMARKS.md``. Quick
mode (``make bench-quick``, a few minutes; one repeat, small sizes) writes everything under
``bench/results/quick/`` and never touches the full results or BENCHMARKS.md: run it before
and after a hot-path change and compare the tables it prints.

    .venv/bin/python bench/run_all.py [--quick]
        [--only mapping,engine,sandbox,ratelimit,e2e,fidelity]

One broker serves all end-to-end scenarios (``KAFKA_BOOTSTRAP_SERVERS``, else one started
for the run and stopped after). Exit status: 1 when a step failed (the others still run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, loadavg, machine_facts, results_dir, write_result

BENCH = ROOT / "bench"


def steps(quick: bool) -> dict[str, list[str]]:
    """Step name -> argv (after the interpreter). Sizes are each script's defaults in full
    mode; quick mode shrinks them."""
    if quick:
        return {
            "mapping": ["bench_mapping.py", "--events", "50000", "--repeats", "5"],
            "engine": ["bench_engine.py", "--repeats", "1"],
            "sandbox": ["bench_sandbox.py", "--seconds", "3", "--repeats", "1"],
            "ratelimit": ["bench_ratelimit.py", "--quick", "--repeats", "1"],
            "e2e": ["bench_e2e.py", "--quick"],
            "fidelity": ["bench_fidelity.py"],
        }
    return {
        "mapping": ["bench_mapping.py"],
        "engine": ["bench_engine.py"],
        "sandbox": ["bench_sandbox.py"],
        "ratelimit": ["bench_ratelimit.py"],
        "e2e": ["bench_e2e.py", "--profile"],
        "fidelity": ["bench_fidelity.py"],  # seconds; needs the real-world corpus (its --help)
    }


OUT_FILES = {
    "mapping": "mapping.json",
    "engine": "engine.json",
    "sandbox": "sandbox.json",
    "ratelimit": "ratelimit.json",
    "fidelity": "fidelity.json",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", help="comma list of steps (mapping, engine, sandbox, ratelimit, e2e, fidelity)"
    )
    args = parser.parse_args()
    out = results_dir(args.quick)
    plan = steps(args.quick)
    if args.only:
        plan = {name: argv for name, argv in plan.items() if name in args.only.split(",")}
    started = time.monotonic()
    load_start = loadavg()
    failed: list[str] = []
    commands: dict[str, str] = {}
    for name, argv in plan.items():
        argv = [str(BENCH / argv[0]), *argv[1:]]
        if name in OUT_FILES:
            argv += ["--out", str(out / OUT_FILES[name])]
        shown = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in argv]
        commands[name] = " ".join([".venv/bin/python", *shown])
        print(f"\n### {name}: {commands[name]}", flush=True)
        step_started = time.monotonic()
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, check=False)
        print(f"### {name}: exit {done.returncode} in {time.monotonic() - step_started:.0f}s")
        if done.returncode != 0:
            failed.append(name)
    write_result(
        out / "run.json",
        {
            "quick": args.quick,
            "machine": machine_facts(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "seconds": round(time.monotonic() - started, 1),
            "commands": commands,
            "failed": failed,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    report = [sys.executable, str(BENCH / "report.py")]
    if args.quick:
        report += ["--results", str(out), "--output", str(out / "BENCHMARKS.md")]
    subprocess.run(report, cwd=ROOT, check=False)
    print(f"\nall steps in {time.monotonic() - started:.0f}s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
