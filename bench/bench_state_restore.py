"""The partitioned profile state restored from a real changelog (issue 19): how much memory,
disk and time a member's share of the profiles costs, from scratch and after a restart.

1. ``--profiles`` realistic profiles (``bench_state``'s: email, phone, names, consent; about
   155 B encoded) generated straight into a compacted changelog topic of ``--partitions``
   partitions on the local broker (``bench.common.broker``: ``KAFKA_BOOTSTRAP_SERVERS`` or the
   test suite's launcher), keyed by user, spread by librdkafka's key hash; the generation rate
   is reported.
2. A member's share (the first half of the partitions) restored with
   ``state.changelog.restore_partitions`` into a fresh ``PartitionedProfileStore``, one
   partition after the other (as a rebalance hands them over), in a child process of its own
   (its RSS is the member's state and the interpreter, nothing of the generator): peak RSS,
   anonymous memory, disk use, each partition's records, seconds and rate.
   With ``--compare-page-cache-kib``, the same cold restore again into a fresh directory with
   that SQLite page cache per partition (the store's default is 8 MB), for comparison.
3. ``--tail`` new records written to every partition (changed profiles of existing users),
   then the same member restarted on the same state directory: the records it read (only the
   tail written since its checkpoint) and the time.
4. ``--pair-profiles`` profiles over the same partition count and two members, each a child
   restoring its half at the same time: RSS and profiles of each. The baseline, in the same
   run: one child restoring that whole changelog into memory as the engine does today
   (``ProfileChangelog.restore`` into a ``ChangelogProfileStore``).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_state_restore.py [--profiles 10000000] \
        [--pair-profiles 1000000] [--out bench/results/state_restore.json]

Without ``--profiles`` the scale comes from ``BENCH_STATE_PROFILES`` (default 200,000: a CI
run in under a minute); BENCHMARKS.md's figures are of ``--profiles 10000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_state import _disk, _memory, _profiles  # noqa: E402
from bench.common import (  # noqa: E402
    broker,
    end_offsets,
    loadavg,
    machine_facts,
    produce,
    write_result,
)
from consumer.core.profiles import ChangelogProfileStore, Profile  # noqa: E402
from consumer.state.changelog import ProfileChangelog, restore_partitions  # noqa: E402
from consumer.state.profile_state import PartitionedProfileStore  # noqa: E402
from tests.kafka_broker import create_topic  # noqa: E402

_CI_PROFILES = 200_000


def _tail(profiles: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """``count`` changed profiles of random existing users (a new phone and consent)."""
    rng = random.Random(7)
    for _ in range(count):
        key = f"user{rng.randrange(profiles):08d}"
        profile = Profile(
            fields={"email": f"{key}@example.org", "phone": f"+1212{rng.randrange(10**7):07d}"},
            consent={"marketing": rng.random() < 0.5},
        )
        yield key.encode(), memoryview(profile.to_bytes()).tobytes()


def _generate(bootstrap: str, profiles: int, partitions: int) -> dict[str, Any]:
    topic = create_topic(
        bootstrap, partitions=partitions, prefix="bench-profiles", **{"cleanup.policy": "compact"}
    )
    count, seconds = produce(bootstrap, topic, _profiles(profiles, 1))
    return {
        "topic": topic,
        "profiles": count,
        "generate_s": round(seconds, 1),
        "generate_per_s": round(count / seconds),
        "records_per_partition": end_offsets(bootstrap, topic),
    }


def _member(bootstrap: str, topic: str, owned: Sequence[int], state_dir: Path,
            extra: Sequence[str] = ()) -> subprocess.Popen[str]:
    """A child process restoring ``owned`` into ``state_dir`` (see ``_restore_child``);
    ``owned`` empty: the whole changelog into memory (``_whole_child``)."""
    return subprocess.Popen(
        [sys.executable, __file__, "--child", "--bootstrap", bootstrap, "--topic", topic,
         "--owned", ",".join(map(str, owned)), "--state-dir", str(state_dir), *extra],
        stdout=subprocess.PIPE, text=True,
    )


class _NoMetrics:
    def profile_restored(self, seconds: float, size: int) -> None:
        pass


async def _whole_child(args: argparse.Namespace) -> dict[str, Any]:
    """Today's mode, the baseline: every profile of the changelog read into memory."""
    store = ChangelogProfileStore()
    changelog = ProfileChangelog(
        store=store, topic=args.topic, bootstrap=args.bootstrap, metrics=_NoMetrics(),
        extra=_reader(args),
    )
    rss_before = _memory()["VmRSS"]
    started = time.perf_counter()
    await changelog.restore()
    seconds = time.perf_counter() - started
    memory = _memory()
    return {
        "owned": "all",
        "records_read": sum(end_offsets(args.bootstrap, args.topic).values()),
        "restore_s": round(seconds, 2),
        "rss_before_mb": rss_before,
        "peak_rss_mb": memory["VmHWM"],
        "rss_anon_mb": memory["RssAnon"],
        "rss_file_mb": memory["RssFile"],
    }


def _result(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"member child exited with {child.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def _reader(args: argparse.Namespace) -> dict[str, str]:
    """librdkafka settings of the restore's reader: its prefetch, when given."""
    if not args.reader_queued_kib:
        return {}
    return {"queued.max.messages.kbytes": str(args.reader_queued_kib)}


async def _restore_child(args: argparse.Namespace) -> dict[str, Any]:
    """The member: restore each owned partition in turn, then close the store cleanly."""
    store = PartitionedProfileStore(
        args.state_dir, args.topic, cache_entries=args.cache_entries,
        page_cache_kib=args.page_cache_kib,
    )
    rss_before = _memory()["VmRSS"]
    parts = []
    started = time.perf_counter()
    for partition in args.owned:
        began = time.perf_counter()
        [restored] = await restore_partitions(
            store, [partition], topic=args.topic, bootstrap=args.bootstrap, extra=_reader(args)
        )
        seconds = time.perf_counter() - began
        read = restored.end - restored.start
        parts.append({
            "partition": partition,
            "from_checkpoint": restored.rebuilt is None,
            "records_read": read,
            "applied": restored.applied,
            "seconds": round(seconds, 2),
            "per_s": round(read / seconds) if read else 0,
        })
    total_s = time.perf_counter() - started
    memory = _memory()
    store.close_all()
    return {
        "owned": list(args.owned),
        "records_read": sum(p["records_read"] for p in parts),
        "restore_s": round(total_s, 2),
        "partitions": parts,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _memory()["VmHWM"],
        "rss_anon_mb": memory["RssAnon"],
        "rss_file_mb": memory["RssFile"],
        "disk_mb": round(_disk(args.state_dir), 1),
        "cache_entries": args.cache_entries,
        "page_cache_kib": args.page_cache_kib,
        "reader_queued_kib": args.reader_queued_kib,
    }


def _store_options(args: argparse.Namespace) -> list[str]:
    return ["--cache-entries", str(args.cache_entries),
            "--page-cache-kib", str(args.page_cache_kib),
            "--reader-queued-kib", str(args.reader_queued_kib)]


def _run(args: argparse.Namespace, bootstrap: str, root: Path) -> dict[str, Any]:
    half = list(range(args.partitions // 2))
    generated = _generate(bootstrap, args.profiles, args.partitions)
    print(json.dumps(generated), flush=True)
    topic = generated["topic"]
    state = root / "member"
    cold = _result(_member(bootstrap, topic, half, state, _store_options(args)))
    print(json.dumps(cold), flush=True)
    compared = None
    if args.compare_page_cache_kib:
        options = [*_store_options(args)[:2], "--page-cache-kib",
                   str(args.compare_page_cache_kib), *_store_options(args)[4:]]
        compared = _result(_member(bootstrap, topic, half, root / "compare", options))
        shutil.rmtree(root / "compare")
        print(json.dumps(compared), flush=True)
    before = end_offsets(bootstrap, topic)
    produce(bootstrap, topic, _tail(args.profiles, args.tail))
    after = end_offsets(bootstrap, topic)
    warm = _result(_member(bootstrap, topic, half, state, _store_options(args)))
    print(json.dumps(warm), flush=True)
    result: dict[str, Any] = {
        "generated": generated,
        "cold": cold,
        "cold_page_cache_compared": compared,
        "tail": {"records": args.tail, "written_to_owned": sum(after[p] - before[p] for p in half)},
        "warm": warm,
    }
    if args.pair_profiles:
        pair = _generate(bootstrap, args.pair_profiles, args.partitions)
        print(json.dumps(pair), flush=True)
        owned = [half, list(range(len(half), args.partitions))]
        children = [
            _member(bootstrap, pair["topic"], parts, root / f"pair{n}", _store_options(args))
            for n, parts in enumerate(owned)
        ]
        members = [_result(child) for child in children]
        print(json.dumps(members), flush=True)
        whole = _result(_member(bootstrap, pair["topic"], [], root / "whole",
                                _store_options(args)))
        print(json.dumps(whole), flush=True)
        result["pair"] = {"generated": pair, "members": members, "whole": whole}
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scale = int(os.environ.get("BENCH_STATE_PROFILES", _CI_PROFILES))
    parser.add_argument("--profiles", type=int, default=scale)
    parser.add_argument("--pair-profiles", type=int, default=scale // 10)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--cache-entries", type=int, default=100_000)
    parser.add_argument("--page-cache-kib", type=int, default=8192)
    parser.add_argument("--compare-page-cache-kib", type=int, default=0)
    parser.add_argument(
        "--reader-queued-kib", type=int, default=0,
        help="the restore reader's queued.max.messages.kbytes (0: librdkafka's default)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/state_restore.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--owned", type=lambda s: [int(p) for p in s.split(",") if p],
                        help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = _restore_child if args.owned else _whole_child
        print(json.dumps(asyncio.run(child(args))))
        return
    started, load_start = time.time(), loadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-state-restore-"))
    try:
        with broker() as bootstrap:
            result = _run(args, bootstrap, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    shown = ["bench/bench_state_restore.py", *(argv if argv is not None else sys.argv[1:])]
    write_result(args.out, {
        "command": " ".join(shown),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": machine_facts(),
        "partitions": args.partitions,
        **result,
    })


if __name__ == "__main__":
    main()
