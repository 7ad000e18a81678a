"""bench/report.py's reading of ``bench_state_restore.py --members`` (issue 19 with real
``ghl-consumer run`` members): a member over 300 MB, a partition restored that did not move,
kept partitions pausing during the new member's restore, or a restart reading more than the
tail are not met; the section shows every member and the baseline."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import state_members_section, state_members_targets


def pair_member(partitions: list[int], peak: float) -> dict[str, Any]:
    return {
        "partitions": partitions,
        "profiles_held": 500 * len(partitions),
        "restore_s": {str(p): 1.5 for p in partitions},
        "restore_records": {str(p): 500 for p in partitions},
        "restores": [{"partition": p, "how": "rebuilt: no local state", "applied": 500}
                     for p in partitions],
        "peak_rss_mb": peak,
    }


RESULT: dict[str, Any] = {
    "command": "bench/bench_state_restore.py --members --profiles 3000",
    "loadavg_start": [1.0, 1.0, 1.0],
    "loadavg_end": [2.5, 1.0, 1.0],
    "machine": {"cpus": 2},
    "partitions": 6,
    "generated": {"profiles": 3000},
    "backlog_events": 600,
    "live_rate": 300.0,
    "pair": {"drained_s": 4.0,
             "members": {"a": pair_member([0, 2, 4], 120.0), "b": pair_member([1, 3, 5], 118.0)}},
    "join": {
        "owned_before": {"a": [0, 2, 4], "b": [1, 3, 5]},
        "owned_after": {"a": [2, 4], "b": [3, 5], "c": [0, 1]},
        "moved": [0, 1],
        "kept": [2, 3, 4, 5],
        "restore_records_c": {"0": 500, "1": 500},
        "restore_s_c": {"0": 0.9, "1": 0.9},
        "restored_again_by_a_b": [],
        "window_s": 7.5,
        "longest_commit_gap_kept_during_restore_s": 0.5,
        "longest_commit_gap_kept_s": 3.5,
        "longest_commit_gap_moved_s": 4.0,
        "longest_commit_gap_before_join_s": 0.6,
        "gaps_s": {str(p): 3.5 for p in range(6)},
        "c_peak_rss_mb": 90.0,
    },
    "restart": {
        "tail_written": 60,
        "changelog_records": 3060,
        "restores": [{"partition": p, "how": "tail", "applied": 10} for p in range(6)],
        "records_read": 60,
        "restore_records": {str(p): 10 for p in range(6)},
        "restore_s": {str(p): 0.2 for p in range(6)},
        "launch_to_restored_s": 1.3,
        "peak_rss_mb": 92.0,
    },
    "whole": {"events": 700, "drained_s": 3.0, "restore_s": 0.5, "records_read": 6120,
              "peak_rss_mb": 150.0},
}


def verdicts(result: dict[str, Any]) -> list[str]:
    return [row[4] for row in state_members_targets(result)]


def test_targets_met_when_the_figures_are_within_them() -> None:
    assert verdicts(RESULT) == ["**met**"] * 3


def test_a_member_over_300_mb_or_holding_nothing_is_not_met() -> None:
    heavy = copy.deepcopy(RESULT)
    heavy["pair"]["members"]["b"]["peak_rss_mb"] = 300.5
    assert verdicts(heavy)[0] == "**NOT met**"
    idle = copy.deepcopy(RESULT)
    idle["pair"]["members"]["a"]["partitions"] = []
    assert verdicts(idle)[0] == "**NOT met**"


def test_a_join_restoring_more_than_what_moved_or_stalling_kept_partitions_is_not_met() -> None:
    again = copy.deepcopy(RESULT)
    again["join"]["restored_again_by_a_b"] = [{"partition": 2, "how": "tail", "applied": 3}]
    assert verdicts(again)[1] == "**NOT met**"
    more = copy.deepcopy(RESULT)
    more["join"]["restore_records_c"]["2"] = 500
    assert verdicts(more)[1] == "**NOT met**"
    stalled = copy.deepcopy(RESULT)
    stalled["join"]["longest_commit_gap_kept_during_restore_s"] = 1.7
    assert verdicts(stalled)[1] == "**NOT met**"


def test_a_restart_rebuilding_or_reading_far_more_than_the_tail_is_not_met() -> None:
    rebuilt = copy.deepcopy(RESULT)
    rebuilt["restart"]["restores"][3]["how"] = "rebuilt: not closed cleanly"
    assert verdicts(rebuilt)[2] == "**NOT met**"
    reread = copy.deepcopy(RESULT)
    reread["restart"]["records_read"] = 60 + 31
    assert verdicts(reread)[2] == "**NOT met**"


def test_the_section_shows_every_member_and_the_baseline() -> None:
    text = "\n".join(state_members_section(RESULT))
    assert "| member a of 2, started together, restore then the backlog | 0, 2, 4 | 1,500 |" in text
    assert "| member c joins under 300 events/s | 0, 1 | - | 1,000 | 0.9 | 90.0 |" in text
    assert "| baseline: one member, whole changelog in memory (no state directory) | all |" in text
    assert "load average 1.0 -> 2.5" in text
    assert "a and b restored 0 partitions again" in text
    assert state_members_section(None) == []
    assert state_members_targets(None) == []
