"""Background tasks the engine starts and must be able to cancel at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


class TaskSet:
    """Holds a strong reference to every task it spawned until the task ends (asyncio keeps
    only weak ones), so none is collected mid-flight and ``cancel_all`` reaches each."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def spawn(self, coroutine: Awaitable[None]) -> None:
        """Run ``coroutine`` as a task on the running loop; its exceptions are its own."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        """Cancel every running task and wait for each to end; never raises."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
