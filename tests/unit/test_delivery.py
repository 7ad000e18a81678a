"""Status -> verdict classification (DESIGN.md section 5)."""

from __future__ import annotations

import pytest

from consumer.delivery import Verdict, classify


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (201, Verdict.DELIVERED),
        (429, Verdict.RATE_LIMITED),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (None, Verdict.RETRY),
        (408, Verdict.RETRY),
        (401, Verdict.UNAUTHORIZED),
        (403, Verdict.UNAUTHORIZED),
        (400, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (422, Verdict.REJECTED),
    ],
)
def test_every_answer_has_the_verdict_design_md_gives_it(
    status: int | None, verdict: Verdict
) -> None:
    assert classify(status) is verdict
