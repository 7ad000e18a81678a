"""Regenerate BENCHMARKS.md and the plots from the JSON results; never edit them by hand.

Every figure in the report is read from a file in the results directory (``bench/results/``
by default): ``mapping.json``, ``sandbox.json``, ``ratelimit.json`` (their own scripts),
``e2e_<scenario>.json`` (``bench_e2e.py``), ``run.json`` (``run_all.py``) and ``soak.json``
(``soak.py``, ``make soak``, not part of ``make bench``) and ``fidelity.json``
(``bench_fidelity.py``, ``make fidelity``, also part of ``make bench``). A missing file leaves
its rows marked "not run". Plots go to ``plots/`` beside the output file's results
(``bench/plots/`` for the default output).

    .venv/bin/python bench/report.py [--results DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PLOTS, RESULTS, ROOT

Doc = dict[str, Any]

COMMANDS = {
    "mapping": ".venv/bin/python bench/bench_mapping.py",
    "sandbox": ".venv/bin/python bench/bench_sandbox.py",
    "ratelimit": ".venv/bin/python bench/bench_ratelimit.py",
    "trace": ".venv/bin/python bench/bench_trace.py",
}


def load(results: Path) -> dict[str, Doc]:
    docs: dict[str, Doc] = {}
    for path in sorted(results.glob("*.json")):
        docs[path.stem] = json.loads(path.read_text())
    return docs


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def rng(s: dict[str, float], digits: int = 0, unit: str = "") -> str:
    """``median (min..max)`` of a spread dict."""
    text = f"{num(s['median'], digits)}{unit}"
    if s.get("n", 2) > 1 and s["min"] != s["max"]:
        text += f" ({num(s['min'], digits)}..{num(s['max'], digits)})"
    return text


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def command_of(docs: dict[str, Doc], key: str) -> str:
    run = docs.get("run", {}).get("commands", {})
    if key.startswith("e2e_"):
        return str(docs[key].get("command", ""))
    return str(run.get(key, COMMANDS.get(key, "")))


# -- plots --------------------------------------------------------------------------------------


def plots(docs: dict[str, Doc], directory: Path) -> dict[str, str]:
    """Draw what the results hold; return {name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(name: str, draw: Callable[[Any], None]) -> None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(directory / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"{name}.png"

    a90 = docs.get("e2e_analytics90", {}).get("timelines")
    if a90:

        def draw_a90(ax: Any) -> None:
            c = a90["consumer"]
            b = a90["bare"]
            ax.plot([r[0] for r in c], [r[1] for r in c], label="ghl-consumer: committed")
            ax.plot([r[0] for r in b], [r[1] for r in b], label="bare consume loop: read")
            ax.set_xlabel("seconds since the process started")
            ax.set_ylabel("events")
            ax.set_title("Draining the 90%-analytics backlog (first repeat)")
            ax.legend()

        save("analytics90_throughput", draw_a90)

    m1 = docs.get("e2e_backlog1m", {}).get("timeline")
    if m1:

        def draw_m1(ax: Any) -> None:
            ax.plot([r[0] for r in m1], [r[2] for r in m1], color="tab:red", label="RSS (MB)")
            ax.set_ylabel("consumer RSS, MB", color="tab:red")
            ax.set_xlabel("seconds since the consumer started")
            ax.axhline(300, color="tab:red", linestyle=":", label="target 300 MB")
            twin = ax.twinx()
            twin.plot([r[0] for r in m1], [r[1] for r in m1], label="committed events")
            twin.set_ylabel("committed events")
            ax.set_title(f"{docs['e2e_backlog1m']['events']:,}-event backlog: RSS and progress")
            ax.legend(loc="center right")

        save("backlog1m_rss", draw_m1)

    blog = docs.get("e2e_backlogged")
    if blog and blog.get("per_second"):

        def draw_blog(ax: Any) -> None:
            for name, style, width in (("consumer", "-", 3.0), ("naive", "--", 1.5)):
                rows = blog["per_second"].get(name, [])
                ax.step([r[0] for r in rows], [r[1] for r in rows], style, where="post",
                        linewidth=width, label=f"{name}: 2xx per second")
                bad = [r for r in rows if r[2]]
                if bad:
                    ax.scatter([r[0] for r in bad], [r[2] for r in bad], marker="x",
                               color="red", label=f"{name}: 429 per second")
            ax.axhline(blog["budget"]["per_s"], color="grey", linestyle=":", label="budget")
            ax.set_xlabel("seconds since the first request")
            ax.set_ylabel("requests per second")
            ax.set_title("One backlogged location at (scaled) HighLevel limits")
            ax.legend(fontsize=8)

        save("backlogged_budget", draw_blog)

    bursty = docs.get("e2e_bursty", {}).get("modes")
    if bursty:

        def draw_bursty(ax: Any) -> None:
            names = list(bursty)
            quantiles = ("p50", "p90", "p99")
            width = 0.25
            for i, q in enumerate(quantiles):
                values = [bursty[m]["runs"][0]["latency_ms"][q] for m in names]
                ax.bar([x + i * width for x in range(len(names))], values, width, label=q)
            labels = [
                f"{m}\n{bursty[m]['calls_per_contact']['median']:.2f} calls/contact"
                for m in names
            ]
            ax.set_xticks([x + width for x in range(len(names))], labels)
            ax.set_ylabel("ms from the flow's last event to the contact's update")
            ax.set_title("Bursty identify -> Signed Up -> Lead Generated flows (first repeat)")
            ax.legend()

        save("bursty_latency", draw_bursty)

    scaling = docs.get("e2e_scaling", {}).get("events_per_s")
    if scaling:

        def draw_scaling(ax: Any) -> None:
            ks = sorted(scaling, key=int)
            med = [scaling[k]["median"] for k in ks]
            err = [
                [scaling[k]["median"] - scaling[k]["min"] for k in ks],
                [scaling[k]["max"] - scaling[k]["median"] for k in ks],
            ]
            ax.errorbar([int(k) for k in ks], med, yerr=err, marker="o", capsize=4,
                        label="measured (median, min..max)")
            ax.plot([int(k) for k in ks], [med[0] * int(k) for k in ks], ":", label="linear")
            ax.set_xticks([int(k) for k in ks])
            ax.set_xlabel("consumer processes in the group")
            ax.set_ylabel("events per second")
            ax.set_title("Scale-out on a 2-CPU machine")
            ax.legend()

        save("scaling", draw_scaling)

    soak = docs.get("soak")
    if soak:

        def draw_soak(ax: Any) -> None:
            rss = soak["rss_mb"]["series"]
            for column in range(1, len(rss[0]) if rss else 1):
                ax.plot([r[0] for r in rss], [r[column] for r in rss],
                        label=f"member {column - 1} RSS (MB)")
            ax.set_ylabel("RSS, MB")
            ax.set_xlabel("seconds since the soak started")
            twin = ax.twinx()
            lag = soak["lag"]["series"]
            twin.plot([r[0] for r in lag], [r[1] for r in lag], color="grey", alpha=0.6,
                      label="lag (events)")
            twin.set_ylabel("lag, events")
            for fault in soak["faults"]["log"]:
                ax.axvline(fault["t"], color="tab:red", alpha=0.25, linewidth=0.8)
            ax.set_title("Soak: RSS and lag; faults as red lines")
            ax.legend(loc="upper left")

        save("soak", draw_soak)
    return made


# -- the document -------------------------------------------------------------------------------


def targets(docs: dict[str, Doc]) -> list[list[str]]:
    """Rows: target, figure, baseline, ratio, verdict, command."""
    rows: list[list[str]] = []
    m = docs.get("mapping")
    if m:
        count = m["events"]
        rate = m["map_record"]["events_per_s"]
        low, high = count / m["map_record"]["max_s"], count / m["map_record"]["min_s"]
        ceiling = m["orjson_loads"]["events_per_s"]
        rows.append([
            "Mapping core >= 50,000 events/s on one core",
            f"{num(rate)} ev/s ({num(low)}..{num(high)})",
            f"orjson.loads {num(ceiling)} ev/s (ceiling)",
            f"{m['ratio_to_orjson_ceiling']:.3f} of ceiling",
            verdict(rate >= 50_000),
            command_of(docs, "mapping"),
        ])
    h = docs.get("e2e_hotpath")
    if h:
        for name, work in h["workloads"].items():
            goal = h["target"][name]
            ratio = work["ratio_to_ceiling"]
            rows.append([
                f"Hot path, {name.replace('_', ' ')} ({work['events_per_user']} events/user): "
                f"events/s >= {goal:.0%} of the decode-and-dispatch ceiling",
                f"{rng(work['consumer_events_per_s'])} ev/s, "
                f"{rng(work['consumer_cpu_us_per_event'], 1)} us CPU/ev",
                f"ceiling {rng(work['ceiling_events_per_s'])} ev/s, "
                f"{rng(work['ceiling_cpu_us_per_event'], 2)} us CPU/ev",
                f"{rng(ratio, 3)} of ceiling",
                verdict(ratio["median"] >= goal),
                command_of(docs, "e2e_hotpath"),
            ])
        for name, work in h["workloads"].items():
            if "cpu_ratio_to_floor" not in work:
                continue
            floor = work["cpu_ratio_to_floor"]
            rows.append([
                f"Hot path, {name.replace('_', ' ')}: CPU per event <= 1.5x the least any "
                "consumer spends (the ceiling's read and decode, map_record, and a bare "
                "producer's writes of the profile changes)",
                f"{rng(work['consumer_cpu_us_per_event'], 1)} us CPU/ev",
                f"floor {rng(work['floor_cpu_us_per_event'], 2)} us CPU/ev (map_record "
                f"{rng(work['map_record_cpu_us_per_event'], 2)}"
                + (
                    f"; {work['changelog_writes_per_event']:.3f} writes/ev at "
                    f"{rng(work['produce_cpu_us_per_record'], 2)} us"
                    if "produce_cpu_us_per_record" in work
                    else ""
                )
                + ")",
                f"{rng(floor, 2)}x the floor",
                verdict(floor["median"] <= 1.5),
                command_of(docs, "e2e_hotpath"),
            ])
    t = docs.get("trace")
    if t:
        one, whole = t["trace_one_partition_s"], t["trace_all_partitions_s"]
        rows.append([
            f"trace finds a user's records in a {t['events']:,}-record topic in seconds",
            f"{rng(one, 2)} s (one partition of {t['partitions']})",
            f"every partition: {rng(whole, 2)} s",
            f"{whole['median'] / one['median']:.1f}x faster",
            verdict(one["median"] <= 10),
            command_of(docs, "trace"),
        ])
    u = docs.get("e2e_upserts")
    s = docs.get("sandbox")
    if u:
        ceiling = f"; sandbox alone {num(s['median_upserts_per_s'])}/s" if s else ""
        rows.append([
            "Upserts delivered/s to an unlimited sandbox >= 2,000 (one core)",
            f"{rng(u['upserts_per_s'])} /s",
            f"naive {rng(u['naive_upserts_per_s'])} /s{ceiling}",
            f"{u['ratio_to_naive']}x naive"
            + (f"; {u['upserts_per_s']['median'] / s['median_upserts_per_s']:.2f} of sandbox"
               if s else ""),
            verdict(u["upserts_per_s"]["median"] >= 2000),
            command_of(docs, "e2e_upserts"),
        ])
        if "cpu_ratio_to_client" in u:
            ratio = u["cpu_ratio_to_client"]
            rows.append([
                "CPU per delivered upsert <= 1.5x a bare aiohttp client loop's per request",
                f"{rng(u['consumer_cpu_us_per_upsert'])} us per upsert",
                f"bare client {rng(u['client_cpu_us_per_request'])} us per request "
                f"({rng(u['client_requests_per_s'])} req/s, 64 in flight)",
                f"{rng(ratio, 2)}x the bare client",
                verdict(ratio["median"] <= 1.5),
                command_of(docs, "e2e_upserts"),
            ])
        if "cpu_ratio_to_floor" in u:
            floor = u["cpu_ratio_to_floor"]
            rows.append([
                "CPU per delivered upsert <= 1.5x the least any consumer spends (the bare "
                "client's preparation: consume, decode, map, serialise; plus its posting)",
                f"{rng(u['consumer_cpu_us_per_upsert'])} us per upsert",
                f"bare client {rng(u['client_prepare_cpu_us_per_request'])} us preparing + "
                f"{rng(u['client_cpu_us_per_request'])} us posting per request",
                f"{rng(floor, 2)}x the floor",
                verdict(floor["median"] <= 1.5),
                command_of(docs, "e2e_upserts"),
            ])
    b = docs.get("e2e_backlog1m")
    if b:
        rows.append([
            f"RSS <= 300 MB with a {b['events']:,}-event backlog over {b['users']:,} users",
            f"peak RSS {rng(b['peak_rss_mb'], 1)} MB; drained in "
            f"{rng(b['drain_seconds_from_launch'], 1)} s",
            "-",
            f"{b['peak_rss_mb']['median'] / 300:.2f} of the 300 MB target",
            verdict(b["peak_rss_mb"]["max"] <= 300),
            command_of(docs, "e2e_backlog1m"),
        ])
    if s:
        rows.append([
            "Sandbox >= 3,000 upserts/s",
            f"{num(s['median_upserts_per_s'])} /s ({num(s['min_upserts_per_s'])}.."
            f"{num(s['max_upserts_per_s'])})",
            "-",
            "-",
            verdict(s["median_upserts_per_s"] >= 3000),
            command_of(docs, "sandbox"),
        ])
    g = docs.get("e2e_backlogged")
    if g:
        rows.append([
            "Backlogged location at HighLevel's limits: >= 95% of budget, zero 429s",
            f"{rng(g['of_budget'], 3)} of budget, {g['answers_429']} x 429",
            f"naive {rng(g['naive_of_budget'], 3)} of budget, {g['naive_429']} x 429",
            f"{g['of_budget']['median'] / g['naive_of_budget']['median']:.2f}x naive",
            verdict(g["of_budget"]["median"] >= 0.95 and g["answers_429"] == 0),
            command_of(docs, "e2e_backlogged"),
        ])
    loc = docs.get("e2e_locations")
    if loc:
        r = docs.get("ratelimit", {}).get("cost", {})
        limiter = r.get("local_concurrent_1000_cpu_us_per_request")
        limiter_text = f"; limiter alone {limiter['median']} us CPU/request" if limiter else ""
        rows.append([
            f"{loc['locations']:,} locations, budgets to spare: >= 2,000 requests/s, "
            "limiter CPU per request measured",
            f"{rng(loc['requests_per_s'])} requests/s, {loc['answers_429']} x 429; consumer "
            f"{rng(loc['consumer_cpu_us_per_request'])} us CPU/request{limiter_text}",
            "-",
            "-",
            verdict(loc["requests_per_s"]["median"] >= 2000),
            command_of(docs, "e2e_locations"),
        ])
    f = docs.get("fidelity")
    if f:
        totals = [run["totals"] for run in f["runs"].values()]
        worst = {k: max(t[k] for t in totals) for k in totals[0]}
        rows.append([
            f"Real-world corpus ({f['events']:,} events): 0 crashes, 0 schema failures, "
            "0 wrong-country phones, every identity event with a usable email or phone upserts "
            "(bench/bench_fidelity.py)",
            f"{worst['crashes']} crashes, {worst['schema_failures']} schema failures, "
            f"{worst['wrong_country_phones']} wrong-country phones, "
            f"{worst['identity_misses_to_fix']} identity misses to fix (worst run)",
            "-",
            "-",
            verdict(f["met"]),
            f["command"],
        ])
    rows += state_restore_targets(docs.get("state_restore"))
    rows += state_members_targets(docs.get("state_members"))
    return rows


def state_restore_targets(r: Doc | None) -> list[list[str]]:
    """Issue 19's targets, from ``bench/bench_state_restore.py``."""
    if not r:
        return []
    rows: list[list[str]] = []
    cold, warm, gen = r["cold"], r["warm"], r["generated"]
    whole = r.get("pair", {}).get("whole")
    baseline = (
        f"whole changelog in memory (today's mode), {whole['records_read']:,} profiles: "
        f"{whole['peak_rss_mb']} MB" if whole else "-"
    )
    if "pair" in r:
        members = r["pair"]["members"]
        worst = max(m["peak_rss_mb"] for m in members)
        rows.append([
            f"{r['pair']['generated']['profiles']:,} profiles over {r['partitions']} partitions, "
            "2 members: each holds about half, RSS per member <= 300 MB",
            " / ".join(f"{m['records_read']:,} profiles, {m['peak_rss_mb']} MB" for m in members),
            baseline,
            f"{worst / whole['peak_rss_mb']:.2f}x baseline RSS" if whole else "-",
            verdict(worst <= 300),
            r["command"],
        ])
    rows.append([
        f"{gen['profiles']:,} profiles generated into the changelog: a member's RSS <= 300 MB, "
        "its disk measured",
        f"{cold['peak_rss_mb']} MB peak RSS, {cold['disk_mb']:,.0f} MB on disk for "
        f"{cold['records_read']:,} profiles ({len(cold['owned'])} of {r['partitions']} "
        "partitions)",
        baseline,
        "-",
        verdict(cold["peak_rss_mb"] <= 300),
        r["command"],
    ])
    rows.append([
        "restart of a member with its state directory intact reads only the changelog tail",
        f"{warm['records_read']:,} records read in {warm['restore_s']} s",
        f"tail written to its partitions: {r['tail']['written_to_owned']:,}; "
        f"from scratch: {cold['records_read']:,} in {cold['restore_s']} s",
        f"{cold['restore_s'] / warm['restore_s']:.0f}x faster",
        verdict(
            warm["records_read"] == r["tail"]["written_to_owned"]
            and all(p["from_checkpoint"] for p in warm["partitions"])
        ),
        r["command"],
    ])
    return rows


def _restart_from_tail(restart: Doc) -> bool:
    """Every partition read from its checkpoint, and no more than the tail written since
    (give or take the member's own last writes: 1% of the changelog)."""
    extra = restart["records_read"] - restart["tail_written"]
    return (all(r["how"] == "tail" for r in restart["restores"])
            and extra <= 0.01 * restart["changelog_records"])


def _join_met(join: Doc) -> bool:
    """Only the moved partitions restored (by the new member, nothing again by the others),
    and the kept partitions' commits paused no longer during that restore than one second
    beyond their longest pause under steady load."""
    restored = sorted(int(p) for p in join["restore_records_c"])
    return (
        restored == join["moved"]
        and not join["restored_again_by_a_b"]
        and join["longest_commit_gap_kept_during_restore_s"]
        <= join["longest_commit_gap_before_join_s"] + 1.0
    )


def state_members_targets(r: Doc | None) -> list[list[str]]:
    """Issue 19's targets with real members, from ``bench_state_restore.py --members``."""
    if not r:
        return []
    pair, join, restart, whole = r["pair"], r["join"], r["restart"], r["whole"]
    members = pair["members"]
    worst = max(m["peak_rss_mb"] for m in members.values())
    baseline = (f"one member, whole changelog in memory: {whole['peak_rss_mb']} MB "
                f"(restore {whole['restore_s']:.1f} s)")
    moved = ", ".join(map(str, join["moved"]))
    return [
        [
            f"{r['generated']['profiles']:,} profiles over {r['partitions']} partitions, 2 "
            "`ghl-consumer run` members (restore, then a backlog): each holds about half, "
            "RSS per member <= 300 MB",
            " / ".join(f"{len(m['partitions'])} partitions, {m['profiles_held']:,} profiles, "
                       f"{m['peak_rss_mb']} MB" for m in members.values()),
            baseline,
            f"{worst / whole['peak_rss_mb']:.2f}x baseline RSS",
            verdict(worst <= 300 and all(m["partitions"] for m in members.values())),
            r["command"],
        ],
        [
            "partitions move to a new member (cooperative rebalance, real members, live "
            "load): only those restored; the other partitions keep delivering throughout",
            f"moved {moved}: {sum(join['restore_records_c'].values()):,} records restored "
            f"by the new member in {max(join['restore_s_c'].values())} s, "
            f"{len(join['restored_again_by_a_b'])} restored again elsewhere; kept partitions' "
            "longest commit gap during that restore "
            f"{join['longest_commit_gap_kept_during_restore_s']} s (whole rebalance "
            f"{join['longest_commit_gap_kept_s']} s)",
            f"longest commit gap under steady load: {join['longest_commit_gap_before_join_s']} s",
            "-",
            verdict(_join_met(join)),
            r["command"],
        ],
        [
            "restart of a `ghl-consumer run` member with its state directory intact reads "
            "only the changelog tail",
            f"{restart['records_read']:,} records read in {max(restart['restore_s'].values())} s "
            f"({sum(x['how'] == 'tail' for x in restart['restores'])} of "
            f"{len(restart['restores'])} partitions from their checkpoint)",
            f"tail written: {restart['tail_written']:,}; the changelog: "
            f"{restart['changelog_records']:,} records",
            "-",
            verdict(_restart_from_tail(restart)),
            r["command"],
        ],
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def loads_line(doc: Doc) -> str:
    if "loadavg_start" in doc:
        return f"{doc['loadavg_start'][0]} -> {doc['loadavg_end'][0]}"
    if "load_average_1m" in doc:
        la = doc["load_average_1m"]
        return f"{la['before']:.2f} -> {la['after']:.2f}"
    return "-"


def render(docs: dict[str, Doc], made: dict[str, str], plot_dir: str) -> str:
    out: list[str] = ["# Benchmarks", ""]
    out += [
        "Generated by `bench/report.py` from `bench/results/*.json`; do not edit by hand. "
        "Reproduce everything with `make bench` (about 20 minutes; a quick smoke run, "
        "`make bench-quick`, writes `bench/results/quick/` instead).",
        "",
        "Method: real Kafka broker and the sandbox as a separate process over loopback; the "
        "consumer is `python -m consumer run` in its own process. Baselines run in the same "
        "invocation, over the same topic and against a fresh sandbox: a bare confluent-kafka "
        "consume loop, `orjson.loads` over the same values, and a naive consumer (poll, map "
        "with the same `Mapper`, one `requests` POST per upsert, synchronous commit per "
        "message; `bench/baselines.py`). Consumers are timed from their first commit to the "
        "commit covering the backlog (commit interval 250 ms), baselines from their first "
        "record to their last; start-up and group join are excluded from rates. Figures are "
        "median (min..max) over the repeats stated.",
        "",
    ]
    machine = next(
        (d["machine"] for d in docs.values() if isinstance(d.get("machine"), dict)), None
    )
    if machine:
        run = docs.get("run", {})
        out += ["## Machine", ""]
        out += table(
            ["fact", "value"],
            [
                ["CPU", f"{machine['cpu_model']}, {machine['cpus']} cores (shared, noisy)"],
                ["RAM", f"{machine['ram_gb']} GB"],
                ["OS", machine["os"]],
                ["Python", machine["python"]],
                ["confluent-kafka / librdkafka",
                 f"{machine['confluent_kafka']} / {machine['librdkafka']}"],
                ["Kafka", machine["kafka"]],
                ["Code", f"git {machine.get('git_commit', '?')}"
                 + (" + uncommitted changes in consumer/" if machine.get("consumer_dirty")
                    else "")],
                ["Run", f"{run.get('when', '?')}, {run.get('seconds', '?')} s, load average "
                 f"{loads_line(run) if run else '-'}"],
            ],
        )
        out.append("")
    out += ["## Targets", ""]
    out += table(["target", "figure", "baseline", "ratio", "verdict", "command"], targets(docs))
    out += [""]

    out += hot_path_section(docs.get("e2e_hotpath"), docs.get("e2e_upserts"))
    out += engine_section(docs.get("engine"))

    a = docs.get("e2e_analytics90")
    if a:
        out += ["## End to end, 90% analytics events", ""]
        out += [
            f"{a['events']:,} events on {a['partitions']} partitions ({a['mix']}), "
            f"{a['repeats']} repeats. `orjson.loads` over the same values: "
            f"{num(a['orjson_loads_per_s'])} values/s. The naive consumer is time-boxed to "
            f"{a['naive_seconds']} s per repeat. The bare loop does nothing per record beyond "
            "counting it; the consumer decodes, maps, remembers profiles, delivers and commits "
            "every event (the mapping core section shows the decode and map costs alone).",
            "",
        ]
        rows = []
        for i, r in enumerate(a["runs"], 1):
            c = r["consumer"]
            rows.append([
                str(i), num(c["events_per_s"]), num(r["bare"]["events_per_s"]),
                num(r["naive"]["events_per_s"]), f"{r['ratio_to_bare']:.3f}",
                f"{c['consumer_cpu_share']:.2f}", num(c["consumer_cpu_us_per_event"], 1),
                num(c["upserts_per_s"]), f"{c['peak_rss_mb']:.0f}",
            ])
        out += table(
            ["repeat", "consumer ev/s", "bare loop ev/s", "naive ev/s", "consumer/bare",
             "consumer CPU (cores)", "CPU us/event", "upserts/s", "peak RSS MB"],
            rows,
        )
        out += [""]
        if "analytics90_throughput" in made:
            out += [f"![throughput]({plot_dir}/{made['analytics90_throughput']})", ""]
        out += profile_section(a)

    u = docs.get("e2e_upserts")
    if u:
        out += ["## Upsert-heavy stream to an unlimited sandbox", ""]
        out += [
            f"{u['events']:,} identify events, {u['distinct_contacts']:,} distinct contacts, "
            f"coalescing window {u['coalesce_window_ms']} ms (raw delivery), sandbox `--unlimited`"
            " in its own process: one core for the consumer, one for the sandbox (and the "
            "broker).",
            "",
        ]
        out += table(
            ["measure", "median (min..max)"],
            [
                ["upserts delivered/s", rng(u["upserts_per_s"])],
                ["naive consumer upserts/s", rng(u["naive_upserts_per_s"])],
                ["consumer CPU (cores)", rng(u["consumer_cpu_share"], 2)],
                ["sandbox CPU (cores)", rng(u["sandbox_cpu_share"], 2)],
            ],
        )
        out += [""]

    g = docs.get("e2e_backlogged")
    if g:
        out += ["## One backlogged location at HighLevel's limits", ""]
        out += [
            f"{g['scaled_from']}: the sandbox answers 429 past {g['budget']['burst']} requests "
            f"per {g['budget']['interval_ms']} ms window and the consumer's budget is the same "
            f"(burst = sustained = {g['budget']['burst']}). {g['seconds_per_run']} s per run; "
            "the rate is counted over the server's own windows, leaving out the first (the "
            "idle burst) and the last (cut by the stop). The naive consumer sleeps 1 s on a "
            "429 and retries.",
            "",
        ]
        out += table(
            ["measure", "consumer", "naive"],
            [
                ["achieved / budget", rng(g["of_budget"], 4), rng(g["naive_of_budget"], 4)],
                ["429 answers (all runs)", str(g["answers_429"]), str(g["naive_429"])],
            ],
        )
        out += [""]
        if "backlogged_budget" in made:
            out += [f"![budget]({plot_dir}/{made['backlogged_budget']})", ""]

    loc = docs.get("e2e_locations")
    if loc:
        out += [f"## {loc['locations']:,} locations", ""]
        out += [
            f"{loc['events']:,} identify events spread over {loc['locations']:,} locations "
            f"({loc['routing']}); sandbox at {loc['sandbox_limits']}; consumer budget "
            f"{loc['consumer_budget']}.",
            "",
        ]
        rows = [
            ["requests/s", rng(loc["requests_per_s"])],
            ["429 answers (all runs)", str(loc["answers_429"])],
            ["consumer CPU per request, us", rng(loc["consumer_cpu_us_per_request"])],
            ["consumer CPU (cores)", rng(loc["consumer_cpu_share"], 2)],
        ]
        r = docs.get("ratelimit", {}).get("cost", {})
        for key, label in (
            ("local_concurrent_1000_cpu_us_per_request",
             "limiter alone, 1,000 locations, us CPU/request (bench_ratelimit.py)"),
            ("core_1000_ns_per_op", "limiter pure core, ns/request"),
        ):
            if key in r:
                rows.append([label, rng(r[key], 1)])
        out += table(["measure", "median (min..max)"], rows)
        out += [""]
        out += profile_section(loc)

    bu = docs.get("e2e_bursty")
    if bu:
        out += ["## Bursty identify -> Signed Up -> Lead Generated", ""]
        out += [
            f"{bu['flow']}; {bu['contacts_per_run']:,} contacts per run, produced live for "
            f"{bu['seconds_of_production']} s. Latency: from sending the flow's last event to "
            "the contact's `dateUpdated` in the sandbox. `final state wrong` counts contacts "
            "whose stored source or tags do not match the last event.",
            "",
        ]
        rows = [
            [mode, rng(v["calls_per_contact"], 3), rng(v["latency_p50_ms"]),
             rng(v["latency_p99_ms"]), str(v["final_state_wrong"])]
            for mode, v in bu["modes"].items()
        ]
        out += table(
            ["consumer", "HTTP calls per contact", "latency p50 ms", "latency p99 ms",
             "final state wrong"],
            rows,
        )
        out += [""]
        if "bursty_latency" in made:
            out += [f"![bursty]({plot_dir}/{made['bursty_latency']})", ""]

    b = docs.get("e2e_backlog1m")
    if b:
        out += [f"## {b['events']:,}-event backlog", ""]
        out += [
            f"{b['events']:,} events over {b['users']:,} users (90% analytics), "
            f"{b['repeats']} run(s).",
            "",
        ]
        out += table(
            ["measure", "median (min..max)"],
            [
                ["peak RSS (VmHWM), MB", rng(b["peak_rss_mb"], 1)],
                ["time from launch to all committed, s", rng(b["drain_seconds_from_launch"], 1)],
                ["events/s (first to last commit)", rng(b["events_per_s"])],
            ],
        )
        out += [""]
        if "backlog1m_rss" in made:
            out += [f"![rss]({plot_dir}/{made['backlog1m_rss']})", ""]
    mem = docs.get("e2e_memory")
    if mem:
        out += ["### Where the memory goes", ""]
        out += [
            f"{mem['events']:,} events over {mem['users']:,} users, drained "
            f"{mem['runs_per_variant']} time(s) per variant; "
            "each variant changes settings or the environment only. Command: "
            f"`{mem['command']}`.",
            "",
        ]
        out += table(
            ["variant", "peak RSS MB", "events/s"],
            [[v["variant"], rng(v["peak_rss_mb"], 1), rng(v["events_per_s"])]
             for v in mem["variants"]],
        )
        out += [""]

    sc = docs.get("e2e_scaling")
    if sc:
        out += ["## 1, 2 and 3 instances", ""]
        out += [f"The {sc['events']:,}-event 90%-analytics backlog, {sc['partitions']} "
                f"partitions, drained by one consumer group. {sc['note']}.", ""]
        out += table(
            ["instances", "events/s", "ratio to 1", "consumers' CPU (cores)"],
            [
                [k, rng(v), f"{sc['scaling_ratio'][k]:.2f}",
                 rng(sc["consumers_cpu_share"][k], 2)]
                for k, v in sorted(sc["events_per_s"].items(), key=lambda kv: int(kv[0]))
            ],
        )
        out += [""]
        if "scaling" in made:
            out += [f"![scaling]({plot_dir}/{made['scaling']})", ""]

    m = docs.get("mapping")
    if m:
        out += ["## Mapping core", ""]
        out += [
            f"{m['events']:,} events ({m['mean_event_bytes']:.0f} B mean) over "
            f"{m['users']:,} users, {m['repeats']} repeats, one core, in-process.",
            "",
        ]
        out += table(
            ["step", "events/s", "us/event", "spread %"],
            [
                ["orjson.loads (ceiling)", num(m["orjson_loads"]["events_per_s"]),
                 num(m["orjson_loads"]["us_per_event"], 2),
                 num(m["orjson_loads"]["spread_pct"], 1)],
                ["map_record (full core)", num(m["map_record"]["events_per_s"]),
                 num(m["map_record"]["us_per_event"], 2), num(m["map_record"]["spread_pct"], 1)],
                ["phone parse, uncached", "-",
                 num(m["phone_parse"]["uncached_us_per_call"], 2), "-"],
            ],
        )
        out += [""]

    out += trace_section(docs.get("trace"))
    out += fidelity_section(docs.get("fidelity"))
    out += soak_section(docs.get("soak"), made, plot_dir)
    out += state_section(docs.get("state"))
    out += state_restore_section(docs.get("state_restore"))
    out += state_members_section(docs.get("state_members"))
    out += ["## Load average and code version of each results file", ""]
    def code(doc: Doc) -> str:
        machine = doc.get("machine")
        if not isinstance(machine, dict):  # the older scripts record only the architecture
            return "-"
        return machine["git_commit"] + (" (dirty)" if machine["consumer_dirty"] else "")

    out += table(
        ["results file", "load average (1 min) start -> end", "when", "code (git)"],
        [[f"{name}.json", loads_line(doc), str(doc.get("when", "-")), code(doc)]
         for name, doc in sorted(docs.items())],
    )
    out += [""]
    return "\n".join(out)


LISTED = 40  # rows of a per-event list in the report; the results file holds every one
MISS_ORDER = ("to_fix", "elsewhere", "envelope")  # identity misses, the actionable ones first


def trace_section(t: Doc | None) -> list[str]:
    """``bench/bench_trace.py``'s figures: trace by user id, and the delivery record's size."""
    if not t:
        return []
    out = ["## Tracing one person", ""]
    out += [
        f"`ghl-consumer trace --user-id U --json` as a subprocess (interpreter start and Kafka "
        f"connections included) on a topic of {t['events']:,} records over {t['users']:,} users "
        f"keyed by user id, {t['partitions']} partitions, for the user with the most records "
        f"({t['records_found']}); reading every partition found the same records "
        f"({t['records_found_reading_all']}).",
        "",
    ]
    out += table(
        ["partitions read", "seconds"],
        [
            ["one (`--partitioner crc32`)", rng(t["trace_one_partition_s"], 2)],
            ["at most two (`both`, the default)", num(t["trace_default_both_s"], 2)],
            ["every one (`--partitioner all`)", rng(t["trace_all_partitions_s"], 2)],
        ],
    )
    out += [
        "",
        f"A delivery record (key and value, one source record, a traceId and a contact id) is "
        f"{t['delivery_record_bytes']} B: about {t['delivery_topic_mb_per_million_calls']} MB "
        f"per million HighLevel calls on the delivery topic before compression.",
        "",
    ]
    return out


def hot_path_section(hot: Doc | None, upserts: Doc | None) -> list[str]:
    """Issue 21: the hot path against the decode-and-dispatch ceiling, and why the targets are
    out of reach of a consumer that applies the mapping rules in Python."""
    if not hot:
        return []
    out = ["## Hot path against the decode-and-dispatch ceiling", ""]
    rows = []
    for name, work in hot["workloads"].items():
        cpu = work["consumer_cpu_us_per_event"]["median"]
        ceiling_cpu = work["ceiling_cpu_us_per_event"]["median"]
        rows.append([
            name.replace("_", " "),
            str(work["events_per_user"]),
            rng(work["consumer_events_per_s"]),
            rng(work["consumer_cpu_us_per_event"], 1),
            rng(work["ceiling_events_per_s"]),
            rng(work["ceiling_cpu_us_per_event"], 2),
            f"{work['ratio_to_ceiling']['median']:.3f}",
            f"{ceiling_cpu / cpu:.3f}",
        ])
    out += table(
        ["workload", "events/user", "consumer ev/s", "consumer us CPU/ev", "ceiling ev/s",
         "ceiling us CPU/ev", "ratio (ev/s)", "ratio (CPU)"],
        rows,
    )
    floors = [
        f"{name.replace('_', ' ')} {work['cpu_ratio_to_floor']['median']:.2f}x"
        for name, work in hot["workloads"].items()
        if "cpu_ratio_to_floor" in work
    ]
    out += [
        "",
        "The ceiling (`bench/baselines.py ceiling`) is the least work any consumer of these "
        "events does: `consume(500)`, `orjson.loads`, read the type and name, keep the last "
        "offset per partition: under 2 us of CPU per event, and about 500,000 events/s here "
        "(it and the consumer's members run with `fetch.queue.backoff.ms` 20: at librdkafka's "
        "default, 1000 ms, each filled prefetch queue stalled its partition for a second, "
        "which capped the ceiling near 120,000 events/s and a consumer member near 43,000, "
        "whatever their CPU). The consumer applies the mapping contract to every event in "
        "Python: decode, routing, de-duplication per user and messageId, the consent decision "
        "and the check that it is already stored. `Mapper.map_record` alone, in process over "
        "the same records, costs several times the ceiling's whole CPU per event (the "
        "`map_record` column of the targets table): 50%, 30% or 25% of the ceiling's "
        "events/s would need the whole consumer within 2x to 4x the ceiling's CPU per event, "
        "less than the mapping rules alone take. Those three targets cannot be met by a "
        "consumer that applies these rules in Python; the ratio in CPU is the honest one. "
        "What the batch hot path removed (issue 21): a task, future and loop wake-up per "
        "profile write, per-record counters, a ticket per dropped record, frozen-dataclass "
        "construction per record, a profile decode per analytics event, the one-second fetch "
        "stalls; then the offset tracking of records dropped at once (they only move the "
        "commit point), a delivery-report closure per profile write (their garbage "
        "collection cost more than the write itself), full garbage collections traversing "
        "every start-up object (`gc.freeze`). Nearest honest target, the same for reading "
        "as for delivering: the "
        "consumer's CPU per event at most 1.5x the least any consumer of these events "
        "spends, the floor: the ceiling's CPU plus `map_record`'s (its `orjson.loads` "
        "counted once) plus the profile changes made durable (the changelog writes the "
        "workload makes per event, each at a bare idempotent producer's CPU per record, "
        "`bench/baselines.py produce`), measured in the same run"
        + (f": {', '.join(floors)}." if floors else "."),
        "",
    ]
    if upserts and "cpu_ratio_to_floor" in upserts:
        out += [
            "Delivery: the consumer's CPU per delivered upsert "
            f"({rng(upserts['consumer_cpu_us_per_upsert'])} us) includes reading, decoding, "
            "mapping (phone parsing, about 30 us) and the profile write of its identify "
            "event, and the delivery record; the bare aiohttp loop only posts prepared bodies "
            f"({rng(upserts['client_cpu_us_per_request'])} us per request), after preparing "
            "them (consume, decode, `map_record`, serialise: "
            f"{rng(upserts['client_prepare_cpu_us_per_request'])} us per request). Against "
            "the posting alone the consumer is "
            f"{upserts['cpu_ratio_to_client']['median']:.2f}x (target 1.5x: not met, and "
            "not reachable while preparing a body costs a third of posting it: 1.5x leaves "
            "the consumer half the posting's CPU for reading, mapping, scheduling, the "
            "limiter, the profile write and the records of the call); against preparing and "
            f"posting, {upserts['cpu_ratio_to_floor']['median']:.2f}x (1.71x a round "
            "earlier). Most of that round's gap was the garbage collector, not the delivery "
            "code: the backlog waiting in the scheduler (about 12,000 upserts, several tracked "
            "objects each) outlived two young collections, reached the oldest generation and "
            "paid for full collections of the whole heap, 2.3 s of the consumer's 15 s of CPU "
            "over 40,000 upserts (`gc.callbacks` timed in the real consumer); `ghl-consumer "
            "run` now collects the youngest generation at 5,000 objects instead of 700 (0.6 s) "
            "and freezes start-up's objects. Of the delivery path itself, aiohttp is about two "
            "thirds; the rest is recording each answer (about 30 us: the limiter's signal, "
            "the answer check, the delivery record, the metrics) and the lane loop (about "
            "20 us), none a hot spot (a py-spy profile of the consumer; "
            "`bench_e2e.py --scenario upserts --profile` adds a cProfile run).",
            "",
        ]
    return out


def engine_section(doc: Doc | None) -> list[str]:
    """``bench/bench_engine.py``: the engine's own CPU per event, in process over fakes."""
    if not doc:
        return []
    out = ["### The engine in process", ""]
    rows = [
        [
            name.replace("_", " "),
            str(work["events_per_user"]),
            f"{work['map_record_cpu_us_per_event']:.2f}",
            f"{work['engine_cpu_us_per_event']:.2f}",
            f"+{work['engine_over_map_record_us']:.2f}",
            f"{work['bookkeeping_cpu_us_per_event']:.2f}",
        ]
        for name, work in doc["workloads"].items()
    ]
    out += table(
        ["workload", "events/user", "map_record us/ev", "engine us/ev", "engine - map_record",
         "bookkeeping alone us/ev"],
        rows,
    )
    out += [
        "",
        f"{doc['events']:,} events on {doc['partitions']} partitions, best of "
        f"{doc['repeats']}, no Kafka and no other process (`bench/bench_engine.py`'s "
        "docstring): an `Engine` over in-memory fakes draining them until every partition "
        "committed its end, against `map_record` alone over the same records; \"bookkeeping "
        "alone\" stubs the mapping (one fixed drop): intake, offset tracking, counters, "
        "commits. The difference between the two workloads is the profile writes (about 0.43 "
        "per event with 2 events per user, 0.05 with 20): tickets, their confirmation and the "
        "changelog batches, the producer itself aside. No broker and no other process: "
        "steadier than the end-to-end figures, yet on this shared machine two runs a minute "
        "apart differed by up to 30% (`map_record` itself 10.1 and 13.6 us/ev; load average "
        f"{doc['loadavg_start'][0]} at the start of this one): compare a change within one "
        f"sitting, best of several runs. Command: `{doc['command']}`.",
        "",
    ]
    return out


def fidelity_section(doc: Doc | None) -> list[str]:
    """``bench/bench_fidelity.py``'s figures (the script prints the same lines)."""
    if not doc:
        return []
    runs: dict[str, Doc] = doc["runs"]
    names = {label: "no default region" if label == "none" else f"default region {label}"
             for label in runs}
    heads = list(names.values())

    def per_run(get: Callable[[Doc], object]) -> list[str]:
        return [str(get(run)) for run in runs.values()]

    def listed(rows: list[list[str]], header: list[str]) -> list[str]:
        if not rows:
            return ["None.", ""]
        shown = table(header, rows[:LISTED])
        if len(rows) > LISTED:
            shown.append(f"\n{len(rows) - LISTED} more in the results file.")
        return [*shown, ""]

    machine = doc.get("machine", {})
    files = ", ".join(f"`{name}` {d['events']:,}" for name, d in doc["corpus"]["files"].items())
    out = ["## Fidelity on real-world events", ""]
    out += [
        f"{doc['events']:,} events written by other projects ({files}; provenance in the "
        "corpus README), each mapped by a fresh mapper built as deployed (defaults and "
        "`GHL_LOCATION_ID` only), once with no default phone region and once with `US`. "
        "Definitions of every figure: `bench/bench_fidelity.py`'s docstring. The bar "
        "(issue 14): 0 crashes, 0 schema failures, 0 wrong-country phones, every identity "
        "event with a usable email or phone upserts unless the envelope rejects it or the "
        f"values sit where no trait table looks: {verdict(doc['met'])}. Code: git "
        f"{machine.get('git_commit', '?')}"
        + (" + uncommitted changes in consumer/" if machine.get("consumer_dirty") else "")
        + f". Command: `make fidelity` (`{doc['command']}`).",
        "",
    ]
    summary = [
        ["events", "events"], ["upserts", "upserts"], ["drops", "drops"],
        ["rejects", "rejects"], ["crashes", "crashes"], ["schema failures", "schema_failures"],
        ["wrong-country phones", "wrong_country_phones"],
    ]
    rows = [[label, *per_run(lambda r, k=key: r["totals"][k])] for label, key in summary]
    for label, key in (
        ("identity events (identify, preset track names)", "events"),
        ("... with a usable email or phone", "with_usable_email_or_phone"),
        ("... of which upserted", "upserted"),
        ("... of which NOT upserted (identity misses)", "missed"),
        ("... ... rejected by the envelope (no user id)", "missed_envelope"),
        ("... ... values only where no trait table looks", "missed_elsewhere"),
        ("... ... the mapping should upsert (the bar: 0)", "missed_to_fix"),
    ):
        rows.append([label, *per_run(lambda r, k=key: r["identity"][k])])
    out += [*table(["measure", *heads], rows), ""]

    out += ["### Outcomes by file", ""]
    rows = []
    sources = [("all files", [run["actions"]["total"] for run in runs.values()])]
    for source in sorted({f for run in runs.values() for f in run["actions"]["by_file"]}):
        sources.append(
            (source, [run["actions"]["by_file"].get(source, {}) for run in runs.values()])
        )
    for source, counts in sources:
        seen: dict[str, int] = {}
        for count in counts:
            for key, n in count.items():
                seen[key] = seen.get(key, 0) + n
        for key in sorted(seen, key=lambda k: (-seen[k], k)):
            rows.append([source, key, *[str(count.get(key, 0)) for count in counts]])
    out += [*table(["file", "outcome", *heads], rows), ""]

    out += ["### Identity fields recovered (upserts carrying each payload key)", ""]
    fields = list(dict.fromkeys(f for run in runs.values() for f in run["fields"]))
    out += table(["field", *heads], [[f, *per_run(lambda r, f=f: r["fields"].get(f, 0))]
                                      for f in fields])
    out += ["", "### Fields omitted, by reason", ""]
    if not any(run["omitted_reported"] for run in runs.values()):
        out += ["The mapper's outcomes carry no `omitted` list (yet).", ""]
    else:
        pairs = sorted({(f, r) for run in runs.values() for f, rs in run["omitted"].items()
                        for r in rs})
        out += listed(
            [[f, r, *per_run(lambda run, f=f, r=r: run["omitted"].get(f, {}).get(r, 0))]
             for f, r in pairs],
            ["field", "reason", *heads],
        )

    out += ["### Wrong-country phones", ""]
    out += listed(
        [[names[label], w["event"], w["phone"], w["stated_country"], w["kind"]]
         for label, run in runs.items() for w in run["wrong_country_phones"]],
        ["run", "event (file:line)", "phone (masked)", "stated country", "kind"],
    )
    out += ["### Identity events with a usable email or phone that did not upsert", ""]
    reasons = list(dict.fromkeys(
        r for run in runs.values() for r in run["identity"]["missed_by_reason"]
    ))
    if reasons:
        out += table(["reason", *heads],
                     [[r, *per_run(lambda run, r=r: run["identity"]["missed_by_reason"].get(r, 0))]
                      for r in reasons])
        out += [""]
    out += listed(
        [[names[label], m["event"], m["name"], m["reason"], m["class"], ", ".join(m["found"])]
         for label, m in sorted(
             ((label, m) for label, run in runs.items() for m in run["identity"]["misses"]),
             key=lambda pair: MISS_ORDER.index(pair[1]["class"]),
         )],
        ["run", "event (file:line)", "event name", "outcome", "class", "usable values at"],
    )
    out += ["### Crashes and schema failures", ""]
    out += listed(
        [[names[label], c["event"], "crash", c["error"]]
         for label, run in runs.items() for c in run["crashes"]]
        + [[names[label], s["event"], "schema", "; ".join(s["errors"])]
           for label, run in runs.items() for s in run["schema_failures"]],
        ["run", "event (file:line)", "kind", "detail"],
    )
    return out


def soak_section(soak: Doc | None, made: dict[str, str], plot_dir: str) -> list[str]:
    """``bench/soak.py``'s figures: load, faults, RSS, lag, drain and the audit."""
    if not soak:
        return []
    events, rss, lag, audit = soak["events"], soak["rss_mb"], soak["lag"], soak["audit"]
    faults = ", ".join(f"{kind} {n}" for kind, n in soak["faults"]["by_kind"].items())
    seconds = soak["duration_s"]
    length = f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"
    out = ["## Soak: steady load with faults, then the audit", ""]
    out += [
        f"{length} at {soak['rate_ev_per_s']:g} events/s into "
        f"{soak['partitions']} partitions, {soak['members']} consumer processes in one group "
        f"sharing Redis, the sandbox at HighLevel's limits ({soak['locations']} locations); "
        "faults injected in turn (see `bench/soak.py`). Result: "
        + ("**OK**" if soak["ok"] else f"**FAILED** ({'; '.join(soak['problems'])})")
        + f". Command: `.venv/bin/python {soak['command']}`.",
        "",
    ]
    out += table(
        ["figure", "value"],
        [
            ["events produced", num(events["produced"])],
            ["faults injected", faults],
            ["unexpected member exits", num(len(soak["unexpected_exits"]))],
            [f"RSS of member {rss['witness']} (never restarted), median of the first / last "
             "quarter, MB", f"{rss['first_quarter_median']} / {rss['last_quarter_median']}"],
            ["RSS max of every member, MB", str(rss["max"])],
            ["lag max / p99, events", f"{num(lag['max'])} / {num(lag['p99'])}"],
            ["drained after the load stopped, s",
             str(soak["drain_seconds"]) if soak["drained"] else "**never**"],
            ["audit: records / delivered identity events / dead-lettered",
             f"{num(audit.get('records', 0))} / {num(audit.get('delivered_events', 0))} / "
             f"{num(audit.get('dead_lettered', 0))}"],
            ["audit: unaccounted events", str(audit.get("unaccounted_events", "audit failed"))],
        ],
    )
    out += [""]
    if "soak" in made:
        out += [f"![soak]({plot_dir}/{made['soak']})", ""]
    return out


def state_section(doc: Doc | None) -> list[str]:
    """``bench/bench_state.py``: the embedded stores measured for the partitioned profile
    state (the choice and its reason: ``docs/architecture.md``, "Profiles")."""
    if not doc:
        return []
    measured = [r for r in doc["results"] if "skipped" not in r]
    if not measured:
        return []

    def fig(r: Doc, name: str, digits: int = 0) -> str:
        low, mid, high = (r[spread][name] for spread in ("min", "median", "max"))
        text = num(mid, digits)
        return text if low == high else f"{text} ({num(low, digits)}..{num(high, digits)})"

    first = measured[0]["median"]
    out = ["## Profile state stores (issue 19)", ""]
    out += [
        f"{first['profiles']:,.0f} profiles of {first['value_bytes']:.0f} B (`Profile.to_bytes`), "
        f"keys in no order, in one store, written in transactions of {first['batch']:.0f} (one "
        "poll batch each); 100,000 random gets of stored keys and 100,000 of missing ones; "
        "20,000 puts each in its own transaction; then one partition's restore "
        f"({first['restore_partition_records']:,.0f} changelog records, 1/{doc['partitions']} of "
        "them, validated and written sorted in transactions of 50,000 with the checkpoint) "
        "into a fresh store: the store's share of a restore (reading Kafka costs the same for "
        "every store, about 65,000 records/s here, issue 19). Each store in its own "
        "interpreter; RSS includes the interpreter (about 30 MB). RssAnon is the process's "
        "own memory, RssFile mapped file pages (LMDB maps its file: its pages count as RSS but "
        f"the kernel can drop them). Median (min..max) of {measured[0]['repeats']} runs, the "
        f"stores interleaved. Command: `.venv/bin/python {doc['command']}`.",
        "",
    ]
    out += table(
        ["store", "batch writes/s", "gets/s", "single puts/s", "restore of a partition, /s",
         "peak RSS MB", "RssAnon / RssFile MB (store open)", "disk MB"],
        [[r["store"], fig(r, "batch_write_per_s"), fig(r, "get_per_s"), fig(r, "put_per_s"),
          fig(r, "restore_per_s"), fig(r, "peak_rss_mb", 1),
          f"{fig(r, 'rss_anon_open_mb', 1)} / {fig(r, 'rss_file_open_mb', 1)}",
          fig(r, "disk_mb", 1)]
         for r in measured],
    )
    member = doc.get("member")
    if member:
        out += [
            "",
            f"The chosen store as a member holds it (`PartitionedProfileStore`, default cache "
            f"of 100,000 profiles, 8 MB SQLite page cache per partition): {member['profiles']:,} "
            f"profiles over {member['partitions']} partitions (a member's half of "
            f"{2 * member['profiles']:,} over {2 * member['partitions']}) restored at "
            f"{num(member['restore_per_s'])}/s (validation and writes; the Kafka read left "
            f"out), then {num(member['get_per_s'])} gets/s of random users (cache hit rate "
            f"{member['cache_hit_rate']:.1%}); peak RSS {member['peak_rss_mb']} MB, "
            f"{member['rss_anon_mb']} MB anonymous at the end, disk {member['disk_mb']} MB.",
        ]
    skipped = [f"{r['store']} ({r['skipped']})" for r in doc["results"] if "skipped" in r]
    if skipped:
        out += ["", "Not measured: " + ", ".join(skipped) + "."]
    return [*out, ""]


def state_restore_section(r: Doc | None) -> list[str]:
    """``bench/bench_state_restore.py``: a member's share of the partitioned profile state
    restored from a real changelog, from scratch and after a restart, and two members."""
    if not r:
        return []
    gen, cold, warm = r["generated"], r["cold"], r["warm"]
    out = ["## Profile state restored from the changelog (issue 19)", ""]
    out += [
        f"{gen['profiles']:,} realistic profiles (email, phone, names, consent; about 155 B "
        f"encoded) generated straight into a compacted changelog of {r['partitions']} "
        f"partitions on the local broker at {num(gen['generate_per_s'])} records/s "
        f"({gen['generate_s']} s, keys spread by librdkafka's hash: "
        f"{min(gen['records_per_partition'].values()):,}.."
        f"{max(gen['records_per_partition'].values()):,} per partition). A member's share "
        f"(partitions {', '.join(map(str, cold['owned']))}) is restored by "
        "`restore_partitions` into a fresh `PartitionedProfileStore` (cache "
        f"{cold['cache_entries']:,} profiles), one partition after the other, in a child "
        "process of its own (RSS: the interpreter, librdkafka's reader and the store); then "
        f"{r['tail']['records']:,} changed profiles are written over all partitions "
        f"({r['tail']['written_to_owned']:,} into the member's) and the member restarts on the "
        "same state directory. One run; load average "
        f"{r['loadavg_start'][0]} -> {r['loadavg_end'][0]} on {r['machine']['cpus']} cores "
        f"(shared). Command: `.venv/bin/python {r['command']}`.",
        "",
    ]

    def row(name: str, m: Doc) -> list[str]:
        rate = m["records_read"] / m["restore_s"] if m["restore_s"] else 0
        return [name, f"{m['records_read']:,}", f"{m['restore_s']}", num(rate),
                f"{m['peak_rss_mb']}", f"{m['rss_anon_mb']}", f"{m.get('disk_mb', '-')}"]

    kib = cold["page_cache_kib"] // 1024
    rows = [row(f"member, from scratch (SQLite page cache {kib} MB per partition)", cold)]
    compared = r.get("cold_page_cache_compared")
    if compared:
        rows.append(row(
            f"member, from scratch (page cache {compared['page_cache_kib'] // 1024} MB)",
            compared,
        ))
    rows.append(row("member restarted, state kept (the tail only)", warm))
    pair = r.get("pair")
    if pair:
        n = f"{pair['generated']['profiles']:,}"
        rows += [row(f"{n}: member {i + 1} of 2 (at the same time)", m)
                 for i, m in enumerate(pair["members"])]
        if pair.get("whole"):
            rows.append(row(f"{n}: whole changelog in memory (today's mode, baseline)",
                            pair["whole"]))
    out += table(
        ["restore", "records read", "s", "records/s", "peak RSS MB", "RssAnon MB (end)",
         "disk MB"],
        rows,
    )
    per = ", ".join(
        f"{p['partition']}: {p['records_read']:,} in {p['seconds']} s ({num(p['per_s'])}/s)"
        for p in cold["partitions"]
    )
    bytes_per = cold["disk_mb"] * 2**20 / cold["records_read"]
    out += [
        "",
        f"From scratch, per partition: {per}. On disk: {bytes_per:.0f} B per profile "
        "(SQLite, key and value, write-ahead log folded in at close).",
        "",
    ]
    return out


def state_members_section(r: Doc | None) -> list[str]:
    """``bench_state_restore.py --members``: issue 19's figures with real members."""
    if not r:
        return []
    gen, pair, join, restart, whole = (
        r["generated"], r["pair"], r["join"], r["restart"], r["whole"]
    )
    out = ["## Profile state with real members (issue 19)", ""]
    out += [
        f"{gen['profiles']:,} profiles generated into a compacted changelog of "
        f"{r['partitions']} partitions (as above), a backlog of {r['backlog_events']:,} events "
        "of those users keyed by user on an event topic of the same partition count (95% page "
        "views, 5% \"Lead Generated\" without traits: only the user's profile makes them an "
        "upsert), the sandbox unlimited. Members are `ghl-consumer run` processes of one "
        "group, each with its own `[profiles] state_dir`; restores are read from their logs "
        "and `/metrics`, commits from the group's committed offsets every 0.2 s, RSS from "
        f"/proc. One run; load average {r['loadavg_start'][0]} -> {r['loadavg_end'][0]} on "
        f"{r['machine']['cpus']} cores (shared with other work). Command: "
        f"`.venv/bin/python {r['command']}`.",
        "",
    ]
    rows = []
    for name, m in pair["members"].items():
        rows.append([
            f"member {name} of 2, started together, restore then the backlog",
            ", ".join(map(str, m["partitions"])), f"{m['profiles_held']:,}",
            f"{sum(m['restore_records'].values()):,}", f"{max(m['restore_s'].values())}",
            f"{m['peak_rss_mb']}",
        ])
    rows.append([
        f"member c joins under {num(r['live_rate'])} events/s",
        ", ".join(map(str, join["moved"])), "-",
        f"{sum(join['restore_records_c'].values()):,}", f"{max(join['restore_s_c'].values())}",
        f"{join['c_peak_rss_mb']}",
    ])
    rows.append([
        f"member a restarted on its state directory, {restart['tail_written']:,} records "
        "written to the changelog meanwhile",
        ", ".join(restart["restore_records"]), "-", f"{restart['records_read']:,}",
        f"{max(restart['restore_s'].values())}", f"{restart['peak_rss_mb']}",
    ])
    rows.append([
        "baseline: one member, whole changelog in memory (no state directory)", "all", "-",
        f"{whole['records_read']:,}", f"{whole['restore_s']:.2f}", f"{whole['peak_rss_mb']}",
    ])
    out += table(["member", "partitions", "profiles held", "changelog records restored",
                  "restore s", "peak RSS MB"], rows)
    gaps = ", ".join(f"{p}: {g} s" for p, g in join["gaps_s"].items())
    out += [
        "",
        f"The pair drained the backlog {pair['drained_s']} s after their launch. When c "
        f"joined, partitions {', '.join(map(str, join['moved']))} moved to it (before: "
        + "; ".join(f"{n} {v}" for n, v in join["owned_before"].items())
        + "; after: " + "; ".join(f"{n} {v}" for n, v in join["owned_after"].items())
        + f"); a and b restored {len(join['restored_again_by_a_b'])} partitions again. "
        "Longest gap between advances of a partition's committed offset: under steady load "
        f"before the join {join['longest_commit_gap_before_join_s']} s; during c's restore, "
        f"kept partitions {join['longest_commit_gap_kept_during_restore_s']} s; from c's "
        f"launch until every partition was restored ({join['window_s']} s, the group's "
        f"rebalance included), per partition: {gaps}. Restart: from launch to every "
        f"partition restored {restart['launch_to_restored_s']} s. The baseline read "
        f"{whole['records_read']:,} records for a changelog of "
        f"{restart['changelog_records']:,}: in whole-changelog mode each feed's assignment "
        "(the events' and the replay topic's) restores the whole changelog (`Engine._restore`"
        "), so it is read twice at start; it drained "
        f"{whole['events']:,} events {whole['drained_s']} s after its launch.",
        "",
    ]
    return out


def profile_section(doc: Doc) -> list[str]:
    prof = doc.get("profile")
    if not prof:
        return []
    out = [
        "Profile of one extra (untimed) run of the consumer under cProfile "
        f"({prof['total_s']:.1f} s in total), top functions by own time (cProfile counts "
        "every resumption of a coroutine as a call):",
        "",
    ]
    out += table(
        ["function", "calls", "own s", "cumulative s"],
        [[f"`{r['function']}`", num(r["calls"]), f"{r['own_s']:.2f}", f"{r['cumulative_s']:.2f}"]
         for r in prof["top_own"][:12]],
    )
    return [*out, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    docs = load(args.results)
    plot_dir = PLOTS if args.results == RESULTS else args.results / "plots"
    made = plots(docs, plot_dir)
    relative = os.path.relpath(plot_dir, args.output.parent)
    text = render(docs, made, relative)
    args.output.write_text(text)
    print(f"wrote {args.output} and {len(made)} plots in {plot_dir}")
    for row in targets(docs):
        print(f"  {row[4]:<13} {row[0]}: {row[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
