"""Pure state of the HighLevel sandbox: contacts per location, matching, rate windows.

Nothing here does I/O or reads a clock: every operation that depends on time takes ``now``
(epoch seconds, float) from its caller, so unit tests drive it with a fake clock and the
server (``consumer.sandbox.server``) passes its injected clock. Nothing here is thread-safe;
the server calls it from its one event loop.

Behaviour emulated (sources in ``docs/highlevel.md``, "Sandbox fidelity"):

- Matching follows the location's duplicate setting (:class:`DuplicateSettings`): the
  identifiers in ``priority`` are tried in order and the first one that finds a contact wins.
  When the request's other identifier belongs to a *different* contact, that field is silently
  not applied (spec description of the upsert, issue #37). With duplicates allowed and
  ``createNewIfDuplicateAllowed: true`` a new contact is created without matching; otherwise the
  duplicate setting does not change matching (spec, scenarios 2 and 3). Where several contacts
  share an identifier (after such a blind create, or for an identifier outside the priority),
  the oldest one is matched.
- Fields present overwrite, fields absent are kept, ``null`` clears the field (the schema
  keeps ``null`` only on the fields the spec marks nullable),
  ``tags`` replace all tags, ``customFields`` overwrite per field id, ``dndSettings`` per channel.
- Tags are stored trimmed and lowercased (:func:`normalise_tags`; callers' live reports).
- ``dnd`` (the global flag) and ``dndSettings`` (per channel) are stored apart: neither sets
  the other (issue #264 payloads). A channel whose status is ``permanent`` (set by HighLevel,
  e.g. an SMS STOP; here by the admin endpoint) cannot be lifted: the whole update is refused
  (:class:`PermanentDnd`, a caller's live report).
- ``gender`` is applied on creation only; on an existing contact it is silently discarded
  (issue #313). Every silently discarded field is reported in :attr:`UpsertResult.ignored`,
  which the real API never tells; the sandbox shows it in its request log.
- Rate limits per location (``consumer.sandbox.rate_window.RateWindow``): a fixed burst
  window that opens with the first request after the previous one closed, and a daily budget
  per UTC day.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumer.sandbox.custom_fields import FieldDefinition
from consumer.sandbox.rate_window import RateWindow
from consumer.sandbox.settings import IDENTIFIERS, DuplicateSettings, Faults, RateLimits

# Request-only fields that are never stored on the contact.
_NOT_STORED = frozenset({"locationId", "createNewIfDuplicateAllowed"})

SCOPES = frozenset({"contacts.readonly", "contacts.write"})
"""What a token may do unless told otherwise: read (``GET /contacts/{id}``) and write contacts."""

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Contact:
    """A stored contact. Mutable: the store updates it in place; render with :meth:`to_json`."""

    __slots__ = (
        "custom_fields",
        "date_added",
        "date_updated",
        "fields",
        "id",
        "location_id",
        "tags",
    )

    def __init__(self, contact_id: str, location_id: str, now: float) -> None:
        self.id = contact_id
        self.location_id = location_id
        self.fields: dict[str, Any] = {}
        self.tags: list[str] = []
        self.custom_fields: dict[str, Any] = {}
        self.date_added = now
        self.date_updated = now

    def to_json(self) -> dict[str, Any]:
        """The contact as HighLevel returns it (GetContectByIdSchema), with derived fields."""
        fields = self.fields
        out: dict[str, Any] = {"id": self.id, "locationId": self.location_id, "type": "lead"}
        out.update(fields)
        first, last = fields.get("firstName"), fields.get("lastName")
        name = fields.get("name") or " ".join(p for p in (first, last) if p) or None
        if name:
            out["name"] = name
            out["fullNameLowerCase"] = name.lower()
        if first:
            out["firstNameLowerCase"] = first.lower()
        if last:
            out["lastNameLowerCase"] = last.lower()
        email = fields.get("email")
        if email:
            out["emailLowerCase"] = email.lower()
        out["dnd"] = fields.get("dnd", False)
        out["tags"] = list(self.tags)
        out["customFields"] = [{"id": k, "value": v} for k, v in self.custom_fields.items()]
        out["dateAdded"] = iso_time(self.date_added)
        out["dateUpdated"] = iso_time(self.date_updated)
        return out

    def to_record(self) -> dict[str, Any]:
        """Internal form for the state file (round-trips through :meth:`from_record`)."""
        return {
            "id": self.id,
            "fields": self.fields,
            "tags": self.tags,
            "customFields": self.custom_fields,
            "dateAdded": self.date_added,
            "dateUpdated": self.date_updated,
        }

    @classmethod
    def from_record(cls, location_id: str, record: Mapping[str, Any]) -> Contact:
        contact = cls(str(record["id"]), location_id, float(record["dateAdded"]))
        contact.date_updated = float(record["dateUpdated"])
        contact.fields = dict(record["fields"])
        contact.tags = list(record["tags"])
        contact.custom_fields = dict(record["customFields"])
        return contact


@dataclass(frozen=True, slots=True)
class UpsertResult:
    new: bool
    contact: Contact
    ignored: tuple[str, ...]
    """Request fields HighLevel would silently not apply (not in the real response)."""


@dataclass(slots=True)
class Location:
    """One sub-account: its settings, contacts, identifier indexes, rate window and counters."""

    id: str
    limits: RateLimits
    duplicates: DuplicateSettings
    faults: Faults
    custom_fields: dict[str, FieldDefinition] | None = None
    """The location's custom field definitions by id; None: any id and value is stored."""
    contacts: dict[str, Contact] = field(default_factory=dict)
    # identifier kind -> normalised value -> ids of the contacts holding it, oldest first
    index: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {kind: {} for kind in IDENTIFIERS}
    )
    rate: RateWindow = field(default_factory=RateWindow)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def iso_time(epoch: float) -> str:
    """``2021-07-02T05:18:26.704Z``, the timestamp form HighLevel returns."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class PermanentDnd(Exception):
    """An update would lift a DND HighLevel made permanent; the whole request is refused.

    ``message`` is HighLevel's (a caller's live report on ``PUT /contacts/{id}``, 2026-10):
    ``Not authorized to update permanent dnd setting for SMS``.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.message = f"Not authorized to update permanent dnd setting for {channel}"
        super().__init__(self.message)


def _identifiers(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The identifier values an upsert matches on, as the index holds them."""
    email = payload.get("email")
    return {"email": email.lower() if email else None, "phone": payload.get("phone")}


def _check_permanent_dnd(contact: Contact, payload: Mapping[str, Any]) -> None:
    """Raise :class:`PermanentDnd` for the first permanent channel of ``contact`` that
    ``payload`` would lift: a ``dndSettings`` entry for it with another status, or
    ``dnd: false`` (the global flag, stored apart from the channels, may not be cleared while a
    channel is permanent: which requests HighLevel refuses exactly is unreported, this is the
    sandbox's reading of the live report). ``dnd: true`` and a ``permanent`` entry pass."""
    stored = contact.fields.get("dndSettings") or {}
    permanent = [ch for ch, setting in stored.items() if setting.get("status") == "permanent"]
    requested = payload.get("dndSettings") or {}
    for channel in permanent:
        change = requested.get(channel)
        if change is not None and change.get("status") != "permanent":
            raise PermanentDnd(channel)
    if permanent and payload.get("dnd") is False:
        raise PermanentDnd(permanent[0])


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Tags as HighLevel stores them: trimmed, lowercased, each once, in the order sent; a tag
    empty after trimming is dropped (a sandbox choice: HighLevel's handling is unreported).
    Source: callers' live reports that tags come back lowercased (docs/highlevel.md, "Known
    pitfalls")."""
    stored = (tag.strip().lower() for tag in tags)
    return list(dict.fromkeys(tag for tag in stored if tag))


def random_contact_id() -> str:
    """A 20-character id shaped like HighLevel's (``seD4PfOuKoVMLkEZqohJ``)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


class SandboxState:
    """All locations, their tokens and contacts. Called by the server; pure and synchronous.

    ``locations`` are ``(location_id, token)`` pairs (a location may have several tokens) or a
    mapping ``{location_id: token}``. ``limits``, ``duplicates``, ``faults`` and
    ``custom_fields`` are every location's initial settings. ``new_id`` makes contact ids
    (tests pass a counter).
    """

    def __init__(
        self,
        locations: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        limits: RateLimits | None = None,
        duplicates: DuplicateSettings | None = None,
        faults: Faults | None = None,
        custom_fields: Mapping[str, FieldDefinition] | None = None,
        new_id: Callable[[], str] = random_contact_id,
    ) -> None:
        pairs = list(locations.items()) if isinstance(locations, Mapping) else list(locations)
        self._new_id = new_id
        self._defaults = (
            limits or RateLimits(),
            duplicates or DuplicateSettings(),
            faults or Faults(),
            custom_fields,
        )
        self._tokens: dict[str, Location] = {}
        self._scopes: dict[str, frozenset[str]] = {}
        self.locations: dict[str, Location] = {}
        self.contacts_by_id: dict[str, Contact] = {}
        self.changes = 0
        """Incremented on every contact change; the persistence task saves when it moved."""
        for location_id, token in pairs:
            self._tokens[token] = self.add_location(location_id)
            self._scopes[token] = SCOPES

    def add_location(self, location_id: str) -> Location:
        """The location ``location_id``, created with the initial settings when new (a location
        reached only through OAuth has no Private Integration token)."""
        location = self.locations.get(location_id)
        if location is None:
            limits, duplicates, faults, custom_fields = self._defaults
            location = Location(
                location_id,
                limits,
                duplicates,
                faults,
                dict(custom_fields) if custom_fields is not None else None,
            )
            self.locations[location_id] = location
        return location

    def location_for_token(self, token: str) -> Location | None:
        return self._tokens.get(token)

    def revoke_token(self, token: str) -> None:
        """Forget ``token``: requests with it answer 401 from now on (a deleted or rotated
        Private Integration token)."""
        self._tokens.pop(token, None)
        self._scopes.pop(token, None)

    def grant_token(
        self, location_id: str, token: str, scopes: Iterable[str] = SCOPES
    ) -> None:
        """Accept ``token`` for ``location_id`` with ``scopes`` (KeyError for an unknown
        location)."""
        self._tokens[token] = self.locations[location_id]
        self._scopes[token] = frozenset(scopes)

    def has_scope(self, token: str, scope: str) -> bool:
        """Whether the (known) ``token`` was granted ``scope``."""
        return scope in self._scopes.get(token, ())

    def set_scopes(self, token: str, scopes: Iterable[str]) -> None:
        """Replace a known token's scopes (KeyError for an unknown token): a Private Integration
        whose scopes were edited in HighLevel's UI."""
        if token not in self._tokens:
            raise KeyError("unknown token")
        self._scopes[token] = frozenset(scopes)

    def match(self, location: Location, payload: Mapping[str, Any]) -> Contact | None:
        """The contact an upsert of ``payload`` would update; None when it would create one."""
        return self._match(location, payload)[0]

    def upsert(
        self,
        location: Location,
        payload: Mapping[str, Any],
        now: float,
        *,
        create: bool = False,
    ) -> UpsertResult:
        """Create or update the contact ``payload`` (validated by ``schema``) designates.

        ``create=True`` creates without matching: what a request does that looked its contact
        up before a concurrent request created it (the server's race mode). Raises
        :class:`PermanentDnd`, changing nothing, when the update would lift a permanent DND.
        """
        target, matched_by = (None, "") if create else self._match(location, payload)
        ignored: list[str] = []
        new = target is None
        if target is None:
            target = Contact(self._new_id(), location.id, now)
            location.contacts[target.id] = target
            self.contacts_by_id[target.id] = target
            location.count("created")
        else:
            _check_permanent_dnd(target, payload)
            keys = _identifiers(payload)
            for kind in location.duplicates.priority:
                value = keys[kind]
                holders = location.index[kind].get(value) if value else None
                if kind != matched_by and holders and target.id not in holders:
                    ignored.append(kind)
            location.count("updated")
        self._apply(location, target, payload, created=new, ignored=ignored)
        target.date_updated = now
        self.changes += 1
        return UpsertResult(new=new, contact=target, ignored=tuple(ignored))

    @staticmethod
    def _match(location: Location, payload: Mapping[str, Any]) -> tuple[Contact | None, str]:
        """The matched contact and the identifier that matched it (or None and "")."""
        settings = location.duplicates
        if settings.allow_duplicates and payload.get("createNewIfDuplicateAllowed"):
            return None, ""
        keys = _identifiers(payload)
        for kind in settings.priority:
            value = keys[kind]
            holders = location.index[kind].get(value) if value else None
            if holders:
                return location.contacts[holders[0]], kind
        return None, ""

    def find(self, location: Location, *, email: str = "", phone: str = "") -> Contact | None:
        """The oldest contact of ``location`` with ``email`` (any case), else with ``phone``
        (E.164 as stored); None when neither is held."""
        for kind, value in _identifiers({"email": email, "phone": phone}).items():
            holders = location.index[kind].get(value) if value else None
            if holders:
                return location.contacts[holders[0]]
        return None

    def set_dnd_settings(
        self, contact: Contact, settings: Mapping[str, Any], now: float
    ) -> None:
        """Set DND channels as HighLevel itself does (an SMS STOP makes SMS ``permanent``):
        merged per channel, with no permanence check (admin endpoint)."""
        contact.fields["dndSettings"] = {**contact.fields.get("dndSettings", {}), **settings}
        contact.date_updated = now
        self.changes += 1

    def add_tags(self, contact: Contact, tags: Iterable[str], now: float) -> None:
        """Append ``tags`` the contact does not have yet (``POST /contacts/{id}/tags``),
        normalised like every stored tag (:func:`normalise_tags`)."""
        for tag in normalise_tags(tags):
            if tag not in contact.tags:
                contact.tags.append(tag)
        contact.date_updated = now
        self.changes += 1

    def _apply(
        self,
        location: Location,
        contact: Contact,
        payload: Mapping[str, Any],
        *,
        created: bool,
        ignored: list[str],
    ) -> None:
        fields = contact.fields
        for key, value in payload.items():
            if key in _NOT_STORED or key in ignored:
                continue
            if key == "gender" and not created:
                if value is not None and value != fields.get("gender"):
                    ignored.append("gender")
                continue
            if key == "tags":
                if value is not None:
                    contact.tags = normalise_tags(value)
            elif key == "customFields":
                contact.custom_fields.update(value or ())
            elif key == "dndSettings":
                if value is not None:
                    fields["dndSettings"] = {**fields.get("dndSettings", {}), **value}
            elif value is None:
                # schema keeps null only on nullable fields: it clears them
                self._set_identifier(location, contact, key, None)
                fields.pop(key, None)
            else:
                self._set_identifier(location, contact, key, value)
                fields[key] = value

    @staticmethod
    def _set_identifier(location: Location, contact: Contact, key: str, value: Any) -> None:
        """Keep the email/phone index in step when ``key`` is an identifier being changed."""
        if key not in location.index:
            return
        index = location.index[key]
        old = contact.fields.get(key)
        old_key = old.lower() if key == "email" and old else old
        new_key = value.lower() if key == "email" and value else value
        if old_key == new_key:
            return
        if old_key:
            holders = index[old_key]
            holders.remove(contact.id)
            if not holders:
                del index[old_key]
        if new_key:
            index.setdefault(new_key, []).append(contact.id)

    def snapshot(self) -> dict[str, Any]:
        """Contacts and daily usage per location, for the state file (no tokens)."""
        return {
            "version": 1,
            "locations": {
                location.id: {
                    "contacts": [c.to_record() for c in location.contacts.values()],
                    "day": location.rate.day,
                    "dailyUsed": location.rate.daily_used,
                }
                for location in self.locations.values()
            },
        }

    def restore(self, snapshot: Mapping[str, Any]) -> list[str]:
        """Load a :meth:`snapshot` into the configured locations; return the ids skipped."""
        skipped = []
        for location_id, saved in snapshot["locations"].items():
            location = self.locations.get(location_id)
            if location is None:
                skipped.append(location_id)
                continue
            for record in saved["contacts"]:
                contact = Contact.from_record(location_id, record)
                location.contacts[contact.id] = contact
                self.contacts_by_id[contact.id] = contact
                for kind in IDENTIFIERS:
                    value = contact.fields.get(kind)
                    if value:
                        key = value.lower() if kind == "email" else value
                        location.index[kind].setdefault(key, []).append(contact.id)
            location.rate.day = int(saved["day"])
            location.rate.daily_used = int(saved["dailyUsed"])
        return skipped

    def delete(self, contact: Contact) -> None:
        """Remove ``contact`` and its identifiers (``DELETE /contacts/{id}``)."""
        location = self.locations[contact.location_id]
        for kind in IDENTIFIERS:
            self._set_identifier(location, contact, kind, None)
        del location.contacts[contact.id]
        del self.contacts_by_id[contact.id]
        self.changes += 1

    def clear(self) -> None:
        """Forget every contact, counter and rate window (admin reset); settings stay."""
        self.contacts_by_id.clear()
        for location in self.locations.values():
            location.contacts.clear()
            location.index = {kind: {} for kind in IDENTIFIERS}
            location.rate = RateWindow()
            location.counters.clear()
        self.changes += 1

