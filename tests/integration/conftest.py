"""Fixtures several integration test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.secure_kafka import SASL_PASSWORD, SecuredBroker, secured_broker


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecuredBroker]:
    """A private broker with a SASL_SSL listener (user ``SASL_USERNAME``, ``SASL_PASSWORD``),
    started once per session, and only when a test asks for it."""
    with secured_broker(SASL_PASSWORD) as broker:
        yield broker
