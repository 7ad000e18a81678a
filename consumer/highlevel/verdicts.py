"""What a HighLevel answer means, without HTTP: the verdict the engine acts on, the answer as
the engine, dead letters and the debugger keep it, and the fields HighLevel silently did not
apply. Pure: the engine imports this module, never the aiohttp client beside it.

=================================  ===============  =========================================
answer                             verdict          the engine then
=================================  ===============  =========================================
2xx                                DELIVERED        completes the offsets
429                                RATE_LIMITED     pauses the location, retries
5xx, 408, 425, timeout, no answer  RETRY            backs off (per contact), retries
401 / 403                          UNAUTHORIZED     marks the integration unhealthy, parks
400 / 422 / other 4xx              REJECTED         dead-letters with status, message, traceId
=================================  ===============  =========================================

One 400 is a field-level outcome, not a refusal of the update: HighLevel's ``Not authorized to
update permanent dnd setting for SMS`` (``permanent_dnd_refusal``) says the contact has a DND
HighLevel made permanent (an SMS STOP) and the request would lift it. The engine sends the
same upsert again without ``dnd`` / ``dndSettings`` (``DND_FIELDS``), and that answer decides.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from consumer.core.normalise import normalise_date_of_birth


class Verdict(StrEnum):
    """What an answer means; also the ``outcome`` label of delivery metrics."""

    DELIVERED = "delivered"
    RATE_LIMITED = "rate_limited"
    RETRY = "retry"
    UNAUTHORIZED = "unauthorized"
    REJECTED = "rejected"


def classify(status: int | None) -> Verdict:
    """The verdict for an HTTP status; ``None`` stands for a timeout or connection error."""
    if status is None or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 429:
        return Verdict.RATE_LIMITED
    if status in (401, 403):
        return Verdict.UNAUTHORIZED
    if status in (408, 425):  # request timeout / too early: transient by definition
        return Verdict.RETRY
    return Verdict.REJECTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One HTTP exchange with HighLevel, reduced to what the engine, the dead-letter records
    and the debugger need. ``status`` is None when no HTTP answer arrived (``error`` says why:
    ``timeout`` or ``connection: <exception class>``). ``message`` is HighLevel's error
    message (a 422's message array joined with "; "), empty on success."""

    verdict: Verdict
    status: int | None
    latency_s: float
    trace_id: str | None = None
    message: str = ""
    error: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # A successful answer's JSON (its contact: personal data, so not in the repr); empty for
    # errors, whose body may echo the request (``message`` keeps what is needed, token starred).
    body: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def contact(self) -> Mapping[str, object] | None:
        """The ``contact`` object of a successful upsert answer, if any."""
        contact = self.body.get("contact")
        return contact if isinstance(contact, dict) else None


DND_FIELDS = frozenset({"dnd", "dndSettings"})
"""The upsert fields that set do-not-disturb; what the engine leaves out when HighLevel keeps a
permanent DND."""

DND_CHANNELS = ("SMS", "Email", "WhatsApp", "GMB", "FB", "Call")
"""HighLevel's DND channels (``dndSettings`` keys in the upsert schema)."""

_PERMANENT_DND = re.compile(r"Not authorized to update permanent dnd setting for (\w+)", re.I)


def permanent_dnd_refusal(answer: Answer) -> str | None:
    """The channel (``"SMS"``) when ``answer`` is HighLevel's refusal to overwrite a permanent
    DND (400 ``Not authorized to update permanent dnd setting for SMS``); None for any other
    answer. A channel outside ``DND_CHANNELS`` is returned as written: the caller bounds it."""
    if answer.status != 400:
        return None
    match = _PERMANENT_DND.search(answer.message)
    return match.group(1) if match else None


def ignored_fields(sent: Mapping[str, object], contact: Mapping[str, object] | None) -> list[str]:
    """Names of the fields of ``sent`` (an upsert body) that HighLevel's returned ``contact``
    does not reflect: what it silently ignored (``docs/highlevel.md``, "Silently ignored
    fields": a phone belonging to another contact, ``gender`` on an existing contact, ...).
    Emails compare case-insensitively, phones by their digits, ``tags`` as a subset compared as
    HighLevel stores tags (``tags_applied``: trimmed, lowercased; tag mode ``upsert`` replaces,
    so all sent tags must be there), custom fields by id allowing HighLevel's conversion by
    field type (``custom_value_applied``). Names only: never values, so the result is safe to
    log. An answer without a contact (an add-tags call) ignores nothing."""
    if contact is None:
        return []
    ignored = []
    for name, value in sent.items():
        if name == "locationId":
            continue
        got = contact.get(name)
        if name == "tags":
            if not tags_applied(value, got):
                ignored.append(name)
        elif name == "customFields":
            returned = {
                item.get("id"): item.get("value")
                for item in (got if isinstance(got, list) else [])
                if isinstance(item, dict)
            }
            for item in value if isinstance(value, list) else []:
                if isinstance(item, dict) and not custom_value_applied(
                    item.get("field_value"), returned.get(item.get("id"))
                ):
                    ignored.append(name)
                    break
        elif not _same(name, value, got):
            ignored.append(name)
    return ignored


def _same(name: str, sent: object, got: object) -> bool:
    if sent == got:  # the usual answer: what was sent, as sent
        return True
    if isinstance(sent, str) and isinstance(got, str):
        if name == "email":
            return sent.strip().lower() == got.strip().lower()
        if name == "phone":
            return _digits(sent) == _digits(got)
        return sent.strip() == got.strip()
    return False


def _digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


def tags_applied(sent: object, have: object) -> bool:
    """Whether every tag of ``sent`` (a list of strings) is among ``have`` (the contact's tags),
    compared as HighLevel stores tags: trimmed and lowercased (``" VIP "`` is ``vip``)."""
    return _tag_set(sent) <= _tag_set(have)


def _tag_set(tags: object) -> set[str]:
    if not isinstance(tags, list | tuple):
        return set()
    return {tag.strip().lower() for tag in tags if isinstance(tag, str)}


def custom_value_applied(sent: object, got: object) -> bool:
    """Whether ``got`` (a custom field's value in HighLevel's contact) is ``sent`` as HighLevel
    stores it after converting by the field's type (docs/highlevel.md, "Known pitfalls"; the
    sandbox's table in ``consumer.sandbox.custom_fields``). The consumer does not know the
    field's type, so any conversion of that table counts as applied:

    - a number and its text are one value (``12``, ``12.0``, ``"12"``, ``" 12 "``): a
      ``NUMERICAL`` or ``MONETORY`` field parses the text, a ``TEXT`` field writes the number;
    - a string and the one-item list of it (``CHECKBOX`` / ``MULTIPLE_OPTIONS``);
    - a date in a ``dateOfBirth`` format (``YYYY/MM/DD``, ``MM/DD/YYYY``, separators ``/ - . _``)
      or epoch milliseconds, and the ``YYYY-MM-DD`` HighLevel stores (``DATE``).

    Picklist values are never respelt: ``"Gold"`` is not ``"gold"``."""
    if sent == got and type(sent) is type(got):
        return True
    number = _number(sent)
    if number is not None and number == _number(got):
        return True
    if isinstance(sent, str) and got == [sent]:
        return True
    if isinstance(got, str) and _ISO_DATE.fullmatch(got):
        return _as_date(sent) == got
    return False


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _number(value: object) -> float | None:
    """A finite number, or the number a string spells (JSON numbers only; booleans are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value.strip()):
            return None
        value = float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _as_date(value: object) -> str | None:
    """``YYYY-MM-DD`` of a ``dateOfBirth``-format string or of epoch milliseconds (UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value / 1000, dt.UTC).date().isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    return normalise_date_of_birth(value) if isinstance(value, str) else None
