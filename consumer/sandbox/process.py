"""Run the sandbox as a child process (``python -m consumer sandbox --port 0 ...``).

For callers that must not share their event loop or CPU with it: the benchmarks, the demo,
tests of other processes. The child prints its base URL as its first stdout line; this module
reads it, and stops the child (SIGTERM, then SIGKILL) when the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SandboxProcess:
    url: str
    pid: int


def sandbox_command(
    locations: Mapping[str, str] | Iterable[tuple[str, str]],
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> list[str]:
    """The argv that starts a sandbox for ``locations`` with ``extra_args`` (CLI flags)."""
    pairs = list(locations.items()) if isinstance(locations, Mapping) else list(locations)
    command = [sys.executable, "-m", "consumer", "sandbox", "--host", host, "--port", str(port)]
    for location_id, token in pairs:
        command += ["--location", f"{location_id}:{token}"]
    return command + list(extra_args)


@contextlib.asynccontextmanager
async def sandbox_process(
    locations: Mapping[str, str] | Iterable[tuple[str, str]],
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 30.0,
) -> AsyncIterator[SandboxProcess]:
    """Start a sandbox child on a free port; yield its URL and pid; stop it on exit.

    Raises RuntimeError when the child exits or prints nothing within ``startup_timeout``.
    Its stderr is inherited (warnings and errors only, at the default log level).
    """
    process = await asyncio.create_subprocess_exec(
        *sandbox_command(locations, extra_args, host=host),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None  # stdout=PIPE above
        try:
            line = await asyncio.wait_for(process.stdout.readline(), startup_timeout)
        except TimeoutError:
            line = b""
        url = line.decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"sandbox did not start (exit code {process.returncode})")
        yield SandboxProcess(url=url, pid=process.pid)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
