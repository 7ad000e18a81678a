"""Where the test suite's Kafka broker comes from.

In order: ``KAFKA_BOOTSTRAP_SERVERS`` when set (a broker the caller runs); testcontainers'
Kafka module when a Docker engine answers; else the same local KRaft launcher as
``make kafka-up`` (``tools/kafka/kafka.sh``) on free ports with a temporary state directory,
so every test session starts from an empty broker. Never skips: a broker that cannot be had
fails the session with the launcher's log tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "tools" / "kafka" / "kafka.sh"
# Kafka 4.x (KIP-848 consumer groups) inside the Confluent image testcontainers knows.
CONTAINER_IMAGE = "confluentinc/cp-kafka:8.0.0"


_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: the child (forked from a process with librdkafka threads)
# must not dlopen or allocate before exec, only make this one system call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """``preexec_fn`` for test and benchmark children: receive SIGKILL when the test process
    dies, even by a crash, so no consumer, sandbox or Redis outlives its test."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _docker_answers() -> bool:
    try:
        import docker  # installed with testcontainers

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


class LocalBroker:
    """One ``tools/kafka/kafka.sh`` broker on fixed free ports and its own state directory.

    ``stop`` / ``start`` again keep the port and the data, so fault tests can take the broker
    away mid-stream and bring it back with every topic and committed offset intact; ``kill``
    is the unclean version (SIGKILL, no controlled shutdown). ``close`` stops it and deletes
    the state. A start that fails raises ``subprocess.CalledProcessError`` after the launcher
    printed the log tail.
    """

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="ghl-kafka-"))
        self.port = free_port()
        self._env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_STATE_DIR": str(self.state),
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or reuse) the broker; returns once it answers Metadata requests."""
        subprocess.run([str(LAUNCHER), "up"], env=self._env, check=True)

    def stop(self) -> None:
        """Stop the broker cleanly (SIGTERM, SIGKILL after 20 s); a no-op when it is down."""
        subprocess.run([str(LAUNCHER), "down"], env=self._env, check=False)

    def kill(self) -> None:
        """SIGKILL the broker: a crash, not a shutdown; ``start`` recovers its logs."""
        pidfile = self.state / "broker.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        self.stop()  # waits until the process is gone and removes the pid file

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)


@contextlib.contextmanager
def local_broker() -> Iterator[str]:
    """Start a ``LocalBroker`` on free ports in a temporary state dir; stop and delete it after."""
    broker = LocalBroker()
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.close()


@contextlib.contextmanager
def container_broker() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(CONTAINER_IMAGE).with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


@contextlib.contextmanager
def session_broker() -> Iterator[str]:
    """Yield a bootstrap address for the whole test session (see the module docstring)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
    elif _docker_answers():
        with container_broker() as bootstrap:
            yield bootstrap
    else:
        with local_broker() as bootstrap:
            yield bootstrap


def create_topic(bootstrap: str, *, partitions: int = 1, prefix: str = "t", **config: str) -> str:
    """Create a uniquely named topic and return its name once the broker has created it."""
    # "x" first: 12 hex digits that happen to be all decimal (about 1 in 280) read as a phone
    # number to the logs' masking, which then stars the topic name in every log line
    name = f"{prefix}-x{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)],
        operation_timeout=30,
    )
    futures[name].result(timeout=60)
    return name
