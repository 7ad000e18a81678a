"""The soak's short version (CI): ``bench/soak.py`` as a process for about a minute, with a fault
of every kind forced by its schedule, must drain and leave nothing unaccounted; once with every
profile in memory, once with partitioned profile state (``--partitioned``: each member its own
state directory, anonymous visitors stitched across partitions)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

KINDS = {"sigkill_member", "sigterm_member", "sandbox_faults", "redis_kill", "broker_restart"}


def short_soak(tmp_path: Path, *options: str) -> dict[str, Any]:
    """Run the short soak with ``options``; its result document, once it passed the checks
    both modes share (the soak's own verdict, every fault kind, drained, 0 unaccounted, every
    produced event audited, every outcome reached)."""
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "60", "--rate", "50"]
    argv += ["--fault-gap", "3", "--fault-window", "8", "--drain-timeout", "240"]
    argv += ["--out", str(out), *options]
    soak = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = soak.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGTERM)  # the soak stops its broker, Redis and children
        output, _ = soak.communicate(timeout=120)
        raise
    text = output.decode(errors="replace")
    assert soak.returncode == 0, text[-6000:]

    doc = json.loads(out.read_text())
    assert doc["ok"], doc["problems"]
    assert {k for k, n in doc["faults"]["by_kind"].items() if n >= 1} == KINDS
    assert doc["drained"]
    assert doc["unexpected_exits"] == []
    assert doc["shutdown_exit_codes"] == [0, 0]  # both members left cleanly at the end
    events = doc["events"]
    assert events["produced"] >= 0.9 * 60 * 50  # the rate held (the last tick may be cut)
    assert events["in_topic"] == events["produced"]
    audit = doc["audit"]
    assert audit["exit_code"] == 0
    assert audit["unaccounted_events"] == 0
    assert audit["records"] == events["produced"]
    # the mix reached every outcome: delivered upserts, dead letters, analytics dropped
    assert audit["delivered_events"] > 0
    assert audit["dead_lettered"] >= events["by_kind"]["malformed"] > 0
    assert audit["dropped"]["not_mapped"] > 0
    rss = doc["rss_mb"]
    assert 0 < rss["first_quarter_median"] <= rss["max"]
    assert doc["lag"]["series"]
    result: dict[str, Any] = doc
    return result


@pytest.mark.timeout(900)
def test_short_soak_with_every_fault_drains_and_accounts_for_every_event(tmp_path: Path) -> None:
    doc = short_soak(tmp_path)
    assert doc["profile_state"] == "whole changelog"
    assert doc["stitch_records"] is None


@pytest.mark.timeout(900)
def test_short_soak_with_partitioned_profile_state_accounts_for_every_event(
    tmp_path: Path,
) -> None:
    doc = short_soak(tmp_path, "--partitioned")
    assert doc["profile_state"] == "partitioned"
    # visitors were stitched across partitions through the stitch topic, whose records the
    # audit did not count as events (short_soak: audited records == produced events)
    assert doc["events"]["by_kind"]["visitor"] > 0
    assert doc["stitch_records"] > 0
    # a visitor's anonymous phone reaches HighLevel only with an upsert of the user after the
    # merge: the seed's mix has visitors with none (no lead), and the audit allowed each one's
    # missing phone as a stitch order, not unaccounted
    assert doc["audit"]["allowed_differences"]["stitch_order"] > 0
