"""An asyncio event loop whose clock is virtual, shared by every unit test that waits.

``VirtualTimeLoop`` jumps its clock to the next timer instead of sleeping, so a test that
waits ten simulated minutes takes milliseconds and every instant is exact. The code under test
must read time from the loop (``loop.time()``, ``asyncio.sleep``, ``asyncio.timeout``), as the
engine and the rate limiter do; ``time.time()`` stays the real wall clock.

Two ways in:

- ``@pytest.mark.virtual_time`` (or ``pytestmark``) on an ``async def`` test under
  ``tests/unit`` runs it on this loop, its clock starting at 0
  (``tests/unit/conftest.py`` supplies the loop factory);
- ``run(main)`` runs one coroutine function on a fresh virtual loop from synchronous code
  (a hypothesis test, for example).

The loop raises ``RuntimeError`` when it would block forever (no timer and no ready I/O): a
test that waits on a thread or a real socket without a timeout does not belong on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` only moves when the loop would otherwise block:
    then it jumps to the next timer. Real I/O is still polled (without blocking)."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        # The selector is the one place the loop blocks; wrapping it is the only hook.
        selector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> Any:
            events = real_select(0)
            if events:
                return events
            if timeout is None:
                raise RuntimeError("virtual loop would block forever: nothing is scheduled")
            self._virtual_now += timeout
            return events

        selector.select = select

    def time(self) -> float:
        return self._virtual_now


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual loop whose clock starts at 0, then close
    the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def now() -> float:
    """The running loop's (virtual) time."""
    return asyncio.get_running_loop().time()
