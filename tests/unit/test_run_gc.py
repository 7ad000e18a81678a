"""How ``ghl-consumer run`` sets up the garbage collector: start-up's objects frozen before it
consumes (full collections would traverse them all, every few seconds of a busy stream) and a
higher youngest-generation threshold (the buffered backlog would reach the oldest generation)."""

from __future__ import annotations

import gc

from consumer.commands.run import GC_YOUNG_THRESHOLD, freeze_start_up_objects, tune_gc


def test_objects_alive_at_start_up_leave_the_collectors_reach() -> None:
    alive = len(gc.get_objects())
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > alive / 2  # the rest was garbage, collected first
        assert len(gc.get_objects()) < alive / 10  # what a full collection still traverses
    finally:
        gc.unfreeze()


def test_tune_gc_raises_the_youngest_threshold_and_keeps_the_older_ones() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 11, 12)
        assert GC_YOUNG_THRESHOLD > 700  # CPython's default, which it replaces
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
