"""``ghl-consumer run`` tunes the garbage collector's youngest generation only."""

from __future__ import annotations

import gc

from consumer.commands.run import GC_YOUNG_THRESHOLD, tune_gc


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
