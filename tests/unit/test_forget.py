"""``ghl-consumer forget``'s subject: normalised, hashed for the record, masked for output."""

from __future__ import annotations

import argparse

import pytest

from consumer.commands.forget import Subject, subject
from consumer.errors import ConfigError


def _args(**given: str | None) -> argparse.Namespace:
    return argparse.Namespace(**{"email": None, "user_id": None, "anonymous_id": None, **given})


def test_an_email_is_normalised_as_profiles_store_it_and_masked() -> None:
    who = subject(_args(email=" Sam@Example.COM "))
    assert who == Subject("email", "sam@example.com")
    assert who.masked == "s***@example.com"
    assert who.digest.startswith("sha256:")
    assert "sam" not in who.digest


def test_an_id_is_shown_by_its_hash_only() -> None:
    who = subject(_args(user_id="lead-987"))
    assert who.kind == "user-id"
    assert "lead-987" not in who.masked
    assert who.digest != subject(_args(anonymous_id="lead-987")).digest


def test_an_email_that_is_not_one_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--email: not a valid email address"):
        subject(_args(email="sam at example"))
