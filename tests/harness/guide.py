"""The integration guide's example, once: Sam Rivera's identify, then the Lead Generated track
from the pricing page form, for the guide's location. Tests that need a ``messageId`` or other
variations spread these (``{**GUIDE_IDENTIFY, "messageId": "m-1"}``)."""

from __future__ import annotations

from typing import Any

LOCATION = "ve9EPM428h8vShlRW1KT"
"""The guide's HighLevel location (sub-account) id."""
CONSENT = {"consent": {"canonical": {"marketing": True}}}
"""The guide's consent context: marketing allowed, so the upsert says ``dnd: False``."""

GUIDE_IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "userId": "lead-987",
    "traits": {
        "email": "sam@example.com",
        "phone": "+1 415 555 0142",
        "first_name": "Sam",
        "last_name": "Rivera",
    },
    "context": CONSENT,
}
GUIDE_LEAD: dict[str, Any] = {
    "type": "track",
    "userId": "lead-987",
    "event": "Lead Generated",
    "properties": {"source": "Pricing Page Form", "lead_tag": "website-lead"},
}
GUIDE_UPSERT: dict[str, Any] = {
    "locationId": LOCATION,
    "email": "sam@example.com",
    "phone": "+14155550142",
    "firstName": "Sam",
    "lastName": "Rivera",
    "source": "Pricing Page Form",
    "tags": ["website-lead"],
    "dnd": False,
}
"""What the guide's two events become: one upsert to HighLevel."""
