"""bench/report.py's reading of ``bench_state_restore.py``'s results: issue 19's targets are
judged from the figures (a member over 300 MB, or a restart reading more than the tail, is
not met), and the section shows every restore measured."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import state_restore_section, state_restore_targets


def member(owned: list[int], read: int, seconds: float, peak: float, *, kept: bool = False) -> Any:
    return {
        "owned": owned,
        "records_read": read,
        "restore_s": seconds,
        "partitions": [
            {
                "partition": p,
                "from_checkpoint": kept,
                "records_read": read // len(owned),
                "seconds": seconds / len(owned),
                "per_s": 1000,
            }
            for p in owned
        ],
        "peak_rss_mb": peak,
        "rss_anon_mb": peak - 30,
        "disk_mb": read * 200 / 2**20,
        "cache_entries": 100_000,
        "page_cache_kib": 8192,
    }


RESULT: dict[str, Any] = {
    "command": "bench/bench_state_restore.py --profiles 600000",
    "loadavg_start": [1.0, 1.0, 1.0],
    "loadavg_end": [1.5, 1.0, 1.0],
    "machine": {"cpus": 2},
    "partitions": 6,
    "generated": {
        "profiles": 600_000,
        "generate_s": 6.0,
        "generate_per_s": 100_000,
        "records_per_partition": {str(p): 100_000 for p in range(6)},
    },
    "cold": member([0, 1, 2], 300_000, 10.0, 180.0),
    "cold_page_cache_compared": None,
    "tail": {"records": 1000, "written_to_owned": 480},
    "warm": member([0, 1, 2], 480, 1.5, 70.0, kept=True),
    "pair": {
        "generated": {"profiles": 60_000},
        "members": [member([0, 1, 2], 30_100, 2.0, 90.0), member([3, 4, 5], 29_900, 2.0, 91.0)],
        "whole": {
            "owned": "all",
            "records_read": 60_000,
            "restore_s": 1.0,
            "peak_rss_mb": 150.0,
            "rss_anon_mb": 120.0,
        },
    },
}


def verdicts(result: dict[str, Any]) -> list[str]:
    return [row[4] for row in state_restore_targets(result)]


def test_targets_met_when_the_figures_are_within_them() -> None:
    assert verdicts(RESULT) == ["**met**"] * 3


def test_a_member_over_300_mb_is_not_met() -> None:
    heavy = copy.deepcopy(RESULT)
    heavy["cold"]["peak_rss_mb"] = 301.0
    heavy["pair"]["members"][1]["peak_rss_mb"] = 300.5
    assert verdicts(heavy) == ["**NOT met**", "**NOT met**", "**met**"]


def test_a_restart_reading_more_than_the_tail_is_not_met() -> None:
    reread = copy.deepcopy(RESULT)
    reread["warm"]["records_read"] = 481
    assert verdicts(reread)[2] == "**NOT met**"
    rebuilt = copy.deepcopy(RESULT)
    rebuilt["warm"]["partitions"][1]["from_checkpoint"] = False
    assert verdicts(rebuilt)[2] == "**NOT met**"


def test_the_section_shows_every_restore_and_the_baseline() -> None:
    text = "\n".join(state_restore_section(RESULT))
    assert "| member, from scratch (SQLite page cache 8 MB per partition) | 300,000 |" in text
    assert "| member restarted, state kept (the tail only) | 480 |" in text
    assert "60,000: member 2 of 2" in text
    assert "| 60,000: whole changelog in memory (today's mode, baseline) | 60,000 |" in text
    assert "100,000..100,000 per partition" in text
    assert state_restore_section(None) == []
    assert state_restore_targets(None) == []
