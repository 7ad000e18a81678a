"""Shared harness of the end-to-end benchmarks: broker, topics, producing, processes, statistics.

Who calls: ``bench/bench_e2e.py`` and ``bench/baselines.py``; ``bench/run_all.py`` and
``bench/report.py`` use the result and machine helpers.

- Broker: ``KAFKA_BOOTSTRAP_SERVERS`` when set, else the test suite's launcher
  (``tests/kafka_broker.py``: testcontainers when Docker answers, else ``tools/kafka/kafka.sh``
  on free ports with a throw-away state directory).
- Processes: the consumer runs as ``python -m consumer run --config FILE`` (its own
  interpreter, so its CPU and RSS are its own), the sandbox through
  ``consumer.sandbox.sandbox_process``. CPU and memory come from ``/proc`` (Linux only).
- Progress of a consumer group is read from its committed offsets (the AdminClient), so the
  consumer under test is measured from outside, exactly as deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.kafka_broker import create_topic, session_broker  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUICK_RESULTS = RESULTS / "quick"
PLOTS = ROOT / "bench" / "plots"
LOGS = Path(tempfile.gettempdir()) / "ghl-bench-logs"


# -- statistics and results ----------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    """Median and range of repeated measurements: ``{"median", "min", "max", "n"}``."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_result(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as indented JSON (creating the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def results_dir(quick: bool) -> Path:
    """Full runs write ``bench/results/`` (what BENCHMARKS.md is built from); quick runs write
    ``bench/results/quick/`` so they never overwrite a full run."""
    return QUICK_RESULTS if quick else RESULTS


def kafka_version() -> str:
    pom = (ROOT / "tools" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    return found.group(1) if found else "unknown"


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python and library versions of this machine."""
    import confluent_kafka

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        # uncommitted changes under consumer/ mean the figures are of a work in progress
        "consumer_dirty": bool(git("status", "--porcelain", "--", "consumer")),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "ram_gb": round(ram_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": os.environ.get("BENCH_KAFKA_VERSION")
        or (
            "external broker (KAFKA_BOOTSTRAP_SERVERS)"
            if os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            else f"Apache Kafka {kafka_version()} (tools/kafka/kafka.sh, KRaft, single node)"
        ),
    }


# -- /proc --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of process ``pid`` in MB: resident now and its peak."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, kb, _ = line.split()
            values[name] = int(kb) / 1024
    return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)


# -- Kafka -------------------------------------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """Yield a bootstrap address for the whole benchmark run (see the module docstring)."""
    with session_broker() as bootstrap:
        yield bootstrap


def new_topic(bootstrap: str, partitions: int, prefix: str) -> str:
    return create_topic(bootstrap, partitions=partitions, prefix=prefix)


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]
) -> tuple[int, float]:
    """Produce ``records`` (key, value) fast (batched, acks=all) and wait for every delivery.
    Returns (count, seconds). Raises RuntimeError when a record is not delivered."""
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "compression.type": "lz4",
        }
    )
    started = time.perf_counter()
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0 or failed:
        raise RuntimeError(f"produce to {topic}: {len(failed)} failed, e.g. {failed[:1]}")
    return count, time.perf_counter() - started


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ghl-bench-watermarks"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


class CommitWatcher:
    """Reads a group's committed offsets on ``topic`` (blocking; call it from a thread)."""

    def __init__(self, bootstrap: str, topic: str, partitions: Iterable[int]) -> None:
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._topic = topic
        self._partitions = list(partitions)

    def committed(self, group: str) -> int:
        """Sum of committed offsets (0 for partitions with none, and while the coordinator
        is not ready)."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(self._topic, p) for p in self._partitions]
        )
        try:
            result = self._admin.list_consumer_group_offsets([request])[group].result(timeout=10)
        except KafkaException:
            return 0
        return sum(max(0, tp.offset) for tp in result.topic_partitions)


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Child:
    """A benchmark child process and where its stderr goes."""

    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.asynccontextmanager
async def child_process(
    argv: Sequence[str], *, env: Mapping[str, str], name: str, stdout: int | None = None
) -> AsyncIterator[Child]:
    """Start ``argv`` with ``env`` added to this environment, stderr to a log file under
    ``LOGS``; on exit SIGTERM it, wait up to 60 s for a clean exit, then SIGKILL."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}-{time.strftime('%H%M%S')}-{os.getpid()}.log"
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **env}, stdout=stdout, stderr=err, cwd=ROOT
        )
    child = Child(process, log)
    try:
        yield child
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


def consumer_config(
    *,
    engine: Mapping[str, int | float] | None = None,
    delivery: Mapping[str, int | float] | None = None,
    integrations: Sequence[Mapping[str, Any]] = (),
) -> str:
    """TOML text for ``ghl-consumer run --config``: ``[engine]``, ``[delivery]`` and
    ``[[integrations]]`` (each a table of plain values plus optional ``routing`` and an
    ``access_token_env`` naming the environment variable that holds its token)."""
    lines: list[str] = []
    for section, values in (("engine", engine), ("delivery", delivery)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {value!r}" for key, value in values.items()]
    for integration in integrations:
        lines.append("[[integrations]]")
        routing = integration.get("routing")
        for key, value in integration.items():
            if key == "access_token_env":
                lines.append(f'access_token = {{ env = "{value}" }}')
            elif key != "routing":
                lines.append(f"{key} = {json.dumps(value)}")
        if routing:
            lines.append("[integrations.routing]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in routing.items()]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def consumer_processes(
    count: int, *, config: str, env: Mapping[str, str], name: str, profile: Path | None = None
) -> AsyncIterator[list[Child]]:
    """``count`` consumer processes (``python -m consumer run``) sharing ``config`` and
    ``env`` (bootstrap, topics, group...). With ``profile``, the first runs under cProfile and
    writes its stats there when it stops (SIGTERM: the consumer drains and exits cleanly)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(config)
        path = file.name
    try:
        async with contextlib.AsyncExitStack() as stack:
            children = []
            for index in range(count):
                runner = [sys.executable]
                if profile is not None and index == 0:
                    runner += ["-m", "cProfile", "-o", str(profile)]
                argv = [*runner, "-m", "consumer", "run", "--config", path]
                argv += ["--log-level", "WARNING"]
                # *_PORT=0: each process serves /metrics and /debug on free ports, none collide
                children.append(
                    await stack.enter_async_context(
                        child_process(
                            argv,
                            env={"METRICS_PORT": "0", "DEBUG_PORT": "0", **env},
                            name=f"{name}-{index}",
                        )
                    )
                )
            yield children
    finally:
        os.unlink(path)


@dataclass
class Drain:
    """How a consumer group worked through a backlog, seen from its committed offsets."""

    total: int
    done: bool = False
    seconds_to_first_commit: float = 0.0
    # from the first commit observed to the last: (committed_end - committed_first) events
    drain_seconds: float = 0.0
    drained_events: int = 0
    wall_seconds: float = 0.0  # from launch to everything committed
    cpu_seconds: dict[int, float] = field(default_factory=dict)  # per pid, during the drain
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # per pid, VmHWM at the end
    # rows of [seconds since launch, committed, RSS MB per child..., extra...]
    timeline: list[list[float]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.drained_events / self.drain_seconds if self.drain_seconds > 0 else 0.0


async def watch_drain(
    watcher: CommitWatcher,
    group: str,
    total: int,
    children: Sequence[Child],
    *,
    give_up_after: float,
    interval: float = 0.1,
    extra: Callable[[], Awaitable[list[float]]] | None = None,
) -> Drain:
    """Poll the group's committed offsets until they reach ``total`` (or ``give_up_after``
    seconds), while sampling each child's CPU and RSS. ``extra``: an optional async callable
    whose numbers are appended to every timeline row (e.g. the sandbox's answers and CPU)."""
    result = Drain(total=total)
    started = time.monotonic()
    first: tuple[float, int, dict[int, float]] | None = None
    while True:
        now = time.monotonic() - started
        committed = await asyncio.to_thread(watcher.committed, group)
        for child in children:
            if not child.alive():
                raise RuntimeError(f"consumer {child.pid} exited early:\n{child.log_tail()}")
        cpus = {c.pid: cpu_seconds(c.pid) for c in children}
        rss = [memory_mb(c.pid)[0] for c in children]
        row = [round(now, 3), committed, *[round(r, 1) for r in rss]]
        if extra is not None:
            row += await extra()
        result.timeline.append(row)
        if committed > 0 and first is None:
            first = (now, committed, cpus)
            result.seconds_to_first_commit = now
        if committed >= total and first is not None:
            result.done = True
            result.drain_seconds = now - first[0]
            result.drained_events = committed - first[1]
            result.wall_seconds = now
            result.cpu_seconds = {pid: cpus[pid] - first[2][pid] for pid in cpus}
            break
        if now > give_up_after:
            result.wall_seconds = now
            break
        await asyncio.sleep(interval)
    result.peak_rss_mb = {c.pid: round(memory_mb(c.pid)[1], 1) for c in children}
    return result


def run_script(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run a Python benchmark helper (``env`` added to this environment) that prints one JSON
    object as its last stdout line; return that object. Raises RuntimeError when it fails."""
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
