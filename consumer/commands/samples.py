"""A realistic, reproducible sample event stream: what the demo and the benchmarks produce.

Each user of a seeded population walks a funnel: analytics noise (page views, product views,
clicks), sometimes an identify, a "Signed Up" and a "Lead Generated". Records are keyed by the
user id, as the collectors' Kafka sinks key them. The same seed gives the same stream.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

FIRST_NAMES = ("Sam", "Jane", "Ada", "Grace", "Alan", "Linus", "Maria", "Kofi", "Yuki", "Noor")
LAST_NAMES = ("Rivera", "Doe", "Lovelace", "Hopper", "Turing", "Okafor", "Tanaka", "Haddad")
ANALYTICS = ("Page Viewed", "Product Viewed", "Button Clicked", "Video Played", "Cart Viewed")
SIGNUP_METHODS = ("email", "google", "github")
LEAD_SOURCES = ("Pricing Page Form", "Contact Form", "Webinar", "Newsletter")


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One Kafka record of the sample stream."""

    key: bytes
    value: bytes
    kind: str  # "identify", "signed_up", "lead", "analytics"


def _identity(rng: random.Random, n: int) -> dict[str, object]:
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    return {
        "email": f"{first.lower()}.{last.lower()}{n}@example.com",
        "phone": f"+1 415 555 {n % 10000:04d}",
        "first_name": first,
        "last_name": last,
        "country": "US",
    }


def generate(
    *,
    users: int,
    events: int | None,
    identity_share: float = 0.2,
    seed: int = 7,
    consent: bool = True,
) -> Iterator[SampleRecord]:
    """Yield ``events`` records (None: without end) over ``users`` users; about
    ``identity_share`` of them are identity-bearing (identify, "Signed Up", "Lead
    Generated"), the rest analytics noise."""
    rng = random.Random(seed)
    consent_context: dict[str, object] = (
        {"consent": {"categoryPreferences": {"marketing": True}}} if consent else {}
    )
    for n in itertools.count() if events is None else range(events):
        user = rng.randrange(users)
        user_id = f"user-{user}"
        base: dict[str, object] = {
            "userId": user_id,
            "messageId": f"m-{seed}-{n}",
            "timestamp": f"2026-11-27T10:{(n // 60) % 60:02d}:{n % 60:02d}Z",
        }
        if consent_context:
            base["context"] = consent_context
        if rng.random() >= identity_share:
            event = {
                **base,
                "type": "track",
                "event": rng.choice(ANALYTICS),
                "properties": {"path": f"/p/{rng.randrange(100)}"},
            }
            kind = "analytics"
        else:
            roll = rng.random()
            identity = _identity(random.Random(user), user)
            if roll < 0.5:
                event = {**base, "type": "identify", "traits": identity}
                kind = "identify"
            elif roll < 0.75:
                event = {
                    **base,
                    "type": "track",
                    "event": "Signed Up",
                    "properties": {"method": rng.choice(SIGNUP_METHODS)},
                    "context": {**consent_context, "traits": identity},
                }
                kind = "signed_up"
            else:
                event = {
                    **base,
                    "type": "track",
                    "event": "Lead Generated",
                    "properties": {
                        "source": rng.choice(LEAD_SOURCES),
                        "lead_tag": "website-lead",
                    },
                    "context": {**consent_context, "traits": identity},
                }
                kind = "lead"
        yield SampleRecord(key=user_id.encode(), value=orjson.dumps(event), kind=kind)
