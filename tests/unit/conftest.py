"""Unit-test settings: tests marked ``virtual_time`` run on ``tests.virtual_time``'s loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from tests.virtual_time import VirtualTimeLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop of each ``async def`` unit test: a virtual-time loop for tests marked
    ``virtual_time`` (they never really sleep), asyncio's default loop otherwise."""
    if item.get_closest_marker("virtual_time") is not None:
        return {"virtual_time": VirtualTimeLoop}
    return {"asyncio": asyncio.new_event_loop}
