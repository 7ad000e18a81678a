"""Embedded stores for the partitioned profile state (issue 19), measured the way the consumer
would use them: SQLite (stdlib, WAL), LMDB (``lmdb``) and RocksDB (``rocksdict``), each in its
own interpreter so its RSS is its own.

Per store: ``--profiles`` realistic encoded profiles (about 150 bytes, ``Profile.to_bytes``)
written in batches of ``--batch`` (one transaction each, as one poll batch's writes would be),
random ``get`` of existing and missing keys, single ``put`` each in its own transaction, a
partition's restore (``--profiles / --partitions`` changelog records validated with
``Profile.from_bytes`` and applied in sorted batches of 50,000 with the partition's checkpoint
in the same transaction, into a fresh store: the store's side of a restore; reading Kafka costs
the same whatever the store), peak RSS and disk use.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_state.py [--profiles 1000000] \
        [--stores sqlite,lmdb,rocksdict] [--repeats 3] [--out bench/results/state.json]

Each figure is the median (and min, max) of ``--repeats`` runs, the stores interleaved. A store
whose module is not installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from bench.common import loadavg, machine_facts, write_result
from consumer.core.profiles import Profile
from consumer.state.profile_state import PartitionedProfileStore

_GETS = 200_000
_PUTS = 20_000
_RESTORE_BATCH = 50_000  # as PartitionedProfileStore flushes: sorted, in one transaction
_SPREAD = 999_983  # a prime: i * _SPREAD % n visits every i < n once when n is not a multiple


class _Store(Protocol):
    def put_batch(self, items: Sequence[tuple[bytes, bytes]], checkpoint: int) -> None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def close(self) -> None: ...


class _Sqlite:
    def __init__(self, path: Path) -> None:
        import sqlite3

        self._db = sqlite3.connect(path / "state.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache
        self._db.execute("CREATE TABLE p (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self._db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, offset INTEGER NOT NULL)")

    def put_batch(self, items: Sequence[tuple[bytes, bytes]], checkpoint: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO p VALUES (?, ?)", items)
            self._db.execute("INSERT OR REPLACE INTO c VALUES (0, ?)", (checkpoint,))

    def put(self, key: bytes, value: bytes) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO p VALUES (?, ?)", (key, value))

    def get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT v FROM p WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


class _Lmdb:
    def __init__(self, path: Path) -> None:
        import lmdb

        self._env = lmdb.open(str(path), map_size=8 << 30, max_dbs=2, sync=False)
        self._p = self._env.open_db(b"p")
        self._c = self._env.open_db(b"c")

    def put_batch(self, items: Sequence[tuple[bytes, bytes]], checkpoint: int) -> None:
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(self._p)
            cursor.putmulti(items)
            txn.put(b"offset", str(checkpoint).encode(), db=self._c)

    def put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, value, db=self._p)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin(db=self._p, buffers=False) as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()


class _Rocks:
    def __init__(self, path: Path) -> None:
        import rocksdict

        self._mod = rocksdict
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = rocksdict.Rdict(str(path), options)

    def put_batch(self, items: Sequence[tuple[bytes, bytes]], checkpoint: int) -> None:
        batch = self._mod.WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        batch.put(b"\x00checkpoint", str(checkpoint).encode())
        self._db.write(batch)

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def close(self) -> None:
        self._db.flush()
        self._db.close()


_STORES = {
    "sqlite": (_Sqlite, "sqlite3"),
    "lmdb": (_Lmdb, "lmdb"),
    "rocksdict": (_Rocks, "rocksdict"),
}


def _profiles(n: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """``n`` (key, value) pairs as the changelog holds them: user keys, encoded profiles."""
    rng = random.Random(seed)
    for i in range(n):
        name = f"user{i * _SPREAD % n:08d}"  # each of 0..n-1 once, not in key order
        fields = {
            "email": f"{name}@example{rng.randrange(100)}.com",
            "phone": f"+1415{rng.randrange(10**7):07d}",
            "firstName": rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara"]),
            "lastName": rng.choice(["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov"]),
        }
        consent = {"marketing": rng.random() < 0.7, "analytics": True}
        # a copy: orjson's output keeps its 4 KB working buffer alive with the bytes
        value = Profile(fields=fields, consent=consent).to_bytes()
        yield name.encode(), memoryview(value).tobytes()


def _canonical(value: bytes) -> bytes:
    """What a restore stores for a changelog value: validated, re-encoded, copied."""
    return memoryview(Profile.from_bytes(value).to_bytes()).tobytes()


def _memory() -> dict[str, float]:
    """Resident set size in MB, from /proc: VmRSS (now), VmHWM (peak), RssAnon (the process's
    own memory) and RssFile (mapped file pages, which the kernel can drop)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
            name, kb = line.split()[:2]
            values[name.rstrip(":")] = round(int(kb) / 1024, 1)
    return values


def _disk(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _measure(name: str, profiles: int, partitions: int, batch: int) -> dict[str, object]:
    store_type = _STORES[name][0]
    root = Path(tempfile.mkdtemp(prefix=f"bench-state-{name}-"))
    try:
        rss_start = _memory()["VmRSS"]
        (root / "all").mkdir()
        store: _Store = store_type(root / "all")
        generated = _profiles(profiles, 1)
        value_bytes = elapsed = 0.0
        for i in range(0, profiles, batch):
            items = list(itertools.islice(generated, batch))
            value_bytes += sum(len(v) for _, v in items)
            started = time.perf_counter()
            store.put_batch(items, i + batch)
            elapsed += time.perf_counter() - started
        batch_rate = profiles / elapsed
        value_bytes /= profiles
        rng = random.Random(2)
        keys = [f"user{rng.randrange(profiles):08d}".encode() for _ in range(_GETS // 2)]
        keys += [f"nobody{i:08d}".encode() for i in range(_GETS // 2)]
        rng.shuffle(keys)
        started = time.perf_counter()
        found = sum(store.get(k) is not None for k in keys)
        get_rate = len(keys) / (time.perf_counter() - started)
        assert found == _GETS // 2, found
        started = time.perf_counter()
        for key, value in itertools.islice(_profiles(profiles, 4), _PUTS):
            store.put(key, value)
        put_rate = _PUTS / (time.perf_counter() - started)
        open_memory = _memory()
        store.close()
        disk = _disk(root / "all")
        # one partition's restore into a fresh store: validate each record, apply in batches
        # with the partition's checkpoint in the same transaction
        share = profiles // partitions
        records = _profiles(share, 3)
        (root / "part").mkdir()
        part: _Store = store_type(root / "part")
        restore_s = 0.0
        for i in range(0, share, _RESTORE_BATCH):
            chunk = list(itertools.islice(records, _RESTORE_BATCH))
            started = time.perf_counter()
            part.put_batch(sorted((k, _canonical(v)) for k, v in chunk), i)
            restore_s += time.perf_counter() - started
        started = time.perf_counter()
        part.close()
        restore_s += time.perf_counter() - started
        peak = _memory()["VmHWM"]
        return {
            "store": name,
            "profiles": profiles,
            "value_bytes": round(value_bytes),
            "batch": batch,
            "batch_write_per_s": round(batch_rate),
            "get_per_s": round(get_rate),
            "put_per_s": round(put_rate),
            "disk_mb": round(disk, 1),
            "peak_rss_mb": peak,
            "rss_before_mb": rss_start,
            "rss_anon_open_mb": open_memory["RssAnon"],
            "rss_file_open_mb": open_memory["RssFile"],
            "restore_partition_records": share,
            "restore_partition_s": round(restore_s, 2),
            "restore_per_s": round(share / restore_s),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure_member(profiles: int, partitions: int) -> dict[str, object]:
    """A member's ``PartitionedProfileStore`` holding ``profiles`` over ``partitions``
    partitions, restored through ``restore`` and ``checkpoint`` as ``restore_partitions`` does
    (the Kafka read left out), then 200,000 gets of random users through its cache."""
    root = Path(tempfile.mkdtemp(prefix="bench-state-member-"))
    try:
        store = PartitionedProfileStore(root, "bench.profiles")
        for p in range(partitions):
            store.open(p)
        restore_s = 0.0
        for i, (key, value) in enumerate(_profiles(profiles, 5)):
            started = time.perf_counter()
            store.restore(i % partitions, key.decode(), value)
            restore_s += time.perf_counter() - started
        started = time.perf_counter()
        for p in range(partitions):
            store.checkpoint(p, profiles // partitions)
        restore_s += time.perf_counter() - started
        rng = random.Random(6)
        started = time.perf_counter()
        for _ in range(_GETS):
            i = rng.randrange(profiles)  # the i-th profile made: partition i % partitions
            store.select(i % partitions)
            assert store.get(f"user{i * _SPREAD % profiles:08d}") is not None
        get_s = time.perf_counter() - started
        memory = _memory()
        store.close_all()
        return {
            "profiles": profiles,
            "partitions": partitions,
            "restore_per_s": round(profiles / restore_s),
            "get_per_s": round(_GETS / get_s),
            "cache_hit_rate": round(store.hits / (store.hits + store.misses), 3),
            "peak_rss_mb": memory["VmHWM"],
            "rss_anon_mb": memory["RssAnon"],
            "disk_mb": round(_disk(root), 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,lmdb,rocksdict")
    parser.add_argument("--out", type=Path, default=Path("bench/results/state.json"))
    parser.add_argument(
        "--member-profiles", type=int, default=0,
        help="also measure PartitionedProfileStore holding this many (0: not)",
    )
    parser.add_argument("--member-partitions", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: measure one store
    parser.add_argument("--member", action="store_true", help=argparse.SUPPRESS)  # child
    args = parser.parse_args(argv)
    if args.member:
        print(json.dumps(_measure_member(args.member_profiles, args.member_partitions)))
        return
    if args.one:
        print(json.dumps(_measure(args.one, args.profiles, args.partitions, args.batch)))
        return
    stores = args.stores.split(",")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in stores}
    skipped = {}
    started, load_start = time.time(), loadavg()
    for name in stores:
        module = _STORES[name][1]
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], check=False)
        if probe.returncode != 0:
            skipped[name] = f"{module} not installed"
    for _ in range(args.repeats):  # stores interleaved: a noisy spell hits each alike
        for name in stores:
            if name in skipped:
                continue
            child = subprocess.run(
                [sys.executable, __file__, "--one", name, "--profiles", str(args.profiles),
                 "--partitions", str(args.partitions), "--batch", str(args.batch)],
                check=True, capture_output=True, text=True, env={**os.environ},
            )
            runs[name].append(json.loads(child.stdout))
            print(child.stdout.strip(), flush=True)
    results: list[dict[str, object]] = []
    for name in stores:
        if name in skipped:
            results.append({"store": name, "skipped": skipped[name]})
            continue
        figures = [k for k, v in runs[name][0].items() if isinstance(v, int | float)]
        results.append({
            "store": name,
            "repeats": len(runs[name]),
            **{
                spread: {k: agg([run[k] for run in runs[name]]) for k in figures}
                for spread, agg in (
                    ("median", statistics.median), ("min", min), ("max", max)
                )
            },
        })
    member = None
    if args.member_profiles:
        child = subprocess.run(
            [sys.executable, __file__, "--member", "--member-profiles",
             str(args.member_profiles), "--member-partitions", str(args.member_partitions)],
            check=True, capture_output=True, text=True,
        )
        member = json.loads(child.stdout)
        print(child.stdout.strip(), flush=True)
    shown = ["bench/bench_state.py", *(argv if argv is not None else sys.argv[1:])]
    write_result(args.out, {
        "command": " ".join(shown),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": machine_facts(),
        "partitions": args.partitions,
        "results": results,
        "member": member,
    })


if __name__ == "__main__":
    main()
