"""A real Prometheus server (Debian's ``prometheus``) for tests: scrapes one target every
second, loads grafana/alerts.yml, and answers queries over its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.kafka_broker import ROOT, free_port

QUERY_TIMEOUT_S = 30  # Prometheus start-up plus a few 1 s scrapes, with room for a slow CI


@contextlib.contextmanager
def prometheus_scraping(target_port: int, workdir: Path) -> Iterator[str]:
    """Run Prometheus in ``workdir`` scraping 127.0.0.1:``target_port``; yield its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: apt-get install prometheus (tools/system-deps.sh)"
    shutil.copy(ROOT / "grafana" / "alerts.yml", workdir / "alerts.yml")
    (workdir / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: ghl-consumer\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--config.file=prometheus.yml",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def api(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as response:
        body = await response.json()
    assert body["status"] == "success", body
    return body["data"]


async def query_until(
    session: aiohttp.ClientSession,
    base: str,
    promql: str,
    expected: float | Callable[[float], bool],
) -> list[dict[str, Any]]:
    """Poll an instant query until its (single) result equals ``expected`` (or satisfies it,
    when a predicate)."""
    check = expected if callable(expected) else (lambda value: value == expected)
    result: list[dict[str, Any]] = []
    async with asyncio.timeout(QUERY_TIMEOUT_S):
        while True:
            try:
                result = (await api(session, f"{base}/api/v1/query", query=promql))["result"]
            except aiohttp.ClientConnectionError:
                result = []  # Prometheus still starting
            if len(result) == 1 and check(float(result[0]["value"][1])):
                return result
            await asyncio.sleep(0.5)
