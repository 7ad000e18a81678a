"""``ghl-consumer run`` freezes what start-up made before it consumes (the garbage collector's
full collections would traverse it all, every few seconds of a busy stream)."""

from __future__ import annotations

import gc

from consumer.commands.run import freeze_start_up_objects


def test_objects_alive_at_start_up_leave_the_collectors_reach() -> None:
    alive = len(gc.get_objects())
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > alive / 2  # the rest was garbage, collected first
        assert len(gc.get_objects()) < alive / 10  # what a full collection still traverses
    finally:
        gc.unfreeze()
