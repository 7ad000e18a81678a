"""Map step: a decoded event plus the user's stored profile -> one outcome per routed integration.

Rules (DESIGN.md sections 2-3):

- Identity fields come from, highest precedence first: ``traits`` (not on group/alias calls,
  whose traits describe a group), ``context.traits``, ``properties`` (only for track events an
  integration maps), then the stored profile. Per field the first *usable* value wins (an
  invalid email in ``traits`` falls through to ``context.traits``). snake_case wins over
  camelCase within one container; a top-level ``city`` wins over ``address.city``.
- Consent for the integration's category: first decision on the event (``context.consent``
  views, then RudderStack's ``context.consentManagement``), else the last known one, else none
  (no ``dnd`` key).
- Default preset: identify / "Identified" / "Signed Up" / "Lead Generated" upsert, everything
  else is dropped as ``not_mapped``; aliases map other event names onto these.
- The profile is updated from every routed, valid, non-duplicate event (also ones not mapped
  or rejected for ``no_identifier``), so consent and traits seen on page views count later.

Pure apart from the profile store and deduper it is handed; deterministic for the same inputs.
Called by the engine on its mapping thread, and by ``ghl-consumer map``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from consumer.config import Integration, Settings
from consumer.core.decode import Limits, decode, too_long, wrong_type
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import (
    IDENTITY_FIELDS,
    ContactUpsert,
    CustomValue,
    Drop,
    Event,
    FieldValue,
    Outcome,
    PresetEvent,
    Reason,
    Reject,
)
from consumer.core.normalise import (
    PHONE_REGIONS,
    PhoneNormaliser,
    normalise_country,
    normalise_email,
    normalise_text,
)
from consumer.core.profiles import EMPTY_PROFILE, InMemoryProfileStore, Profile, ProfileStore
from consumer.core.routing import Router

_PRESET_NAMES: Final = {p.value: p for p in PresetEvent}

# trait key (either spelling) -> HighLevel field; snake_case first so it wins within a container
_TRAITS: Final = (
    ("email", "email"),
    ("phone", "phone"),
    ("first_name", "firstName"),
    ("firstName", "firstName"),
    ("last_name", "lastName"),
    ("lastName", "lastName"),
    ("name", "name"),
    ("website", "website"),
    ("city", "city"),
    ("state", "state"),
    ("postal_code", "postalCode"),
    ("postalCode", "postalCode"),
    ("country", "country"),
)
_ADDRESS: Final = (
    ("street", "address1"),
    ("city", "city"),
    ("state", "state"),
    ("postal_code", "postalCode"),
    ("postalCode", "postalCode"),
    ("country", "country"),
)
# Fields where a JSON number is accepted and used as its decimal text.
_NUMERIC_OK: Final = frozenset(("phone", "postalCode"))
# Every identity field but phone (its normalisation depends on a region): text is trimmed.
_NORMALISERS: Final[dict[str, Callable[[str], str | None]]] = {
    **{name: normalise_text for name in IDENTITY_FIELDS if name != "phone"},
    "email": normalise_email,
    "country": normalise_country,
}


def build_mapper(settings: Settings, profiles: ProfileStore | None = None) -> Mapper:
    """A mapper for ``settings``' integrations and ``[mapping]`` section, with an empty
    deduper and ``profiles`` (default: an empty in-memory store bounded as configured)."""
    mapping = settings.mapping
    if profiles is None:  # not ``or``: an empty store is falsy (it has a length)
        profiles = InMemoryProfileStore(mapping.profile_max_entries)
    return Mapper(
        settings.integrations,
        profiles=profiles,
        deduper=MessageDeduper(
            max_entries=mapping.dedupe_max_entries, ttl_seconds=mapping.dedupe_ttl_seconds
        ),
        limits=mapping.limits(),
        phone_cache_size=mapping.phone_cache_size,
    )


class _Invalid(Exception):
    """A field the mapping reads is unusable: carries the record-level Reject to return."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.error)
        self.reject = reject


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str  # where it was read, for error messages
    value: str


_NOT_ROUTED: Final = Drop(Reason.NOT_ROUTED)
_DUPLICATE: Final = Drop(Reason.DUPLICATE)
_NO_USER: Final = Reject(
    Reason.INVALID_EVENT,
    "no user: the record has no key and the event has no userId or anonymousId",
)
# (source, tags, custom fields) of a mapped event for one integration
_Extras = tuple[str | None, tuple[str, ...], dict[str, CustomValue]]


def _wrong_type(path: str, expected: str, value: object) -> _Invalid:
    return _Invalid(wrong_type(path, expected, value))


class Mapper:
    """Maps records to outcomes for the configured integrations.

    ``map_record`` is the engine's entry point; it never raises for any record content. It reads
    and updates ``profiles`` and ``deduper``; it is not thread-safe (one mapper per thread).
    """

    def __init__(
        self,
        integrations: Sequence[Integration],
        *,
        profiles: ProfileStore,
        deduper: MessageDeduper,
        limits: Limits = Limits(),  # noqa: B008 - frozen value
        phone_cache_size: int = 65_536,
    ) -> None:
        self._router = Router(integrations)
        self._profiles = profiles
        self._deduper = deduper
        self._limits = limits
        self.phones = PhoneNormaliser(phone_cache_size)  # cache_info() for metrics
        # Outcomes are immutable values: build the frequent ones once.
        self._not_mapped = {i.id: Drop(Reason.NOT_MAPPED, i.id) for i in integrations}
        self._all_targets = self._router.route_all
        self._all_categories = frozenset(i.consent_category for i in integrations)

    def map_record(
        self,
        *,
        value: bytes,
        key: bytes | None,
        topic: str,
        now: float,
        origin: Hashable | None = None,
    ) -> list[Outcome]:
        """Decode and map one record. Returns one record-level Drop/Reject, or one outcome per
        routed integration (in configuration order). ``origin`` names the record (topic,
        partition, offset) for de-duplication: the same record mapped again is not a
        duplicate of itself.

        The key, any bytes, is the contact key: not valid UTF-8 -> decoded with backslash
        escapes (a binary key is still a key); empty -> absent; over ``max_field_chars``
        bytes -> ``too_large``, since it would be held in the scheduler and the profile store
        and written to the profile changelog."""
        if key is not None and len(key) > self._limits.max_field_chars:
            return [
                Reject(
                    Reason.TOO_LARGE,
                    f"key: {len(key)} bytes, limit {self._limits.max_field_chars}",
                )
            ]
        event = decode(value, self._limits)
        if isinstance(event, Reject):
            return [event]
        contact_key = key.decode("utf-8", "backslashreplace") if key else None
        return self.map_event(
            event, contact_key=contact_key, topic=topic, now=now, origin=origin
        )

    def map_event(
        self,
        event: Event,
        *,
        contact_key: str | None,
        topic: str,
        now: float,
        origin: Hashable | None = None,
    ) -> list[Outcome]:
        """Map a decoded event. ``contact_key`` is the record key if any; else the event's
        userId, else anonymousId, is used. ``origin``: as for ``map_record``."""
        targets = self._router.route(event, topic)
        if not targets:
            return [_NOT_ROUTED]
        if event.message_id is not None and self._deduper.check(event.message_id, now, origin):
            return [_DUPLICATE]
        user_key = contact_key or event.user_id or event.anonymous_id
        if user_key is None:
            return [_NO_USER]
        actions = [self._action(event, integration) for integration in targets]
        mapped = any(action is not None for action in actions)
        try:
            candidates = self._candidates(event, with_properties=mapped and event.type == "track")
            decisions = _consent_decisions(event, self._categories(targets))
            extras = [
                self._extras(event, integration, action) if action is not None else None
                for integration, action in zip(targets, actions, strict=True)
            ]
        except _Invalid as invalid:
            return [invalid.reject]

        if not mapped and not candidates:
            # The common analytics event: nothing to send; at most a consent decision to keep.
            if decisions:
                self._remember_consent(user_key, decisions)
            return [self._not_mapped[integration.id] for integration in targets]
        label = event.event if event.type == "track" and event.event else event.type
        return self._map_identity(user_key, label, targets, extras, candidates, decisions)

    def _map_identity(
        self,
        user_key: str,
        label: str,
        targets: Sequence[Integration],
        extras: Sequence[_Extras | None],
        candidates: Mapping[str, list[_Candidate]],
        decisions: Mapping[str, bool],
    ) -> list[Outcome]:
        stored = self._profiles.get(user_key) or EMPTY_PROFILE
        common = self._resolve_common(candidates, stored)
        phone_candidates = candidates.get("phone", ())
        phone_problems: list[str] = []
        phones: dict[str | None, str | None] = {}  # region -> resolved phone, for this event

        outcomes: list[Outcome] = []
        for integration, extra in zip(targets, extras, strict=True):
            if extra is None:
                outcomes.append(self._not_mapped[integration.id])
                continue
            fields: dict[str, FieldValue] = dict(common)
            phone = self._phone(
                phone_candidates,
                stored,
                self._region(common, integration.default_phone_region),
                phones,
                phone_problems,
            )
            if phone is not None:
                fields["phone"] = phone
            source, tags, custom = extra
            if source is not None:
                fields["source"] = source
            category = integration.consent_category
            granted = decisions.get(category, stored.consent.get(category))
            if granted is not None:
                fields["dnd"] = not granted
            removed = integration.removed_fields
            for name in removed:
                fields.pop(name, None)
            if "email" not in fields and "phone" not in fields:
                error = _no_identifier_error(candidates, removed, phone_problems)
                outcomes.append(Reject(Reason.NO_IDENTIFIER, error, integration.id))
                continue
            outcomes.append(
                ContactUpsert(
                    integration_id=integration.id,
                    location_id=integration.location_id,
                    contact_key=user_key,
                    fields=fields,
                    tags=() if "tags" in removed else tags,
                    custom_fields=custom,
                    tag_mode=integration.tag_mode,
                    events=(label,),
                )
            )

        # Remember the phone as E.164: parsed with the first routed integration's region under
        # which it is a possible number (a national-format number needs a region to mean anything).
        remembered = dict(common)
        for integration in targets:
            region = self._region(common, integration.default_phone_region)
            phone = self._phone(phone_candidates, stored, region, phones, phone_problems)
            if phone is not None:
                remembered["phone"] = phone
                break
        consent = {**stored.consent, **decisions} if decisions else stored.consent
        if remembered != stored.fields or consent != stored.consent:
            self._profiles.put(user_key, Profile(fields=remembered, consent=consent))
        return outcomes

    def _remember_consent(self, user_key: str, decisions: Mapping[str, bool]) -> None:
        stored = self._profiles.get(user_key) or EMPTY_PROFILE
        consent = {**stored.consent, **decisions}
        if consent != stored.consent:
            self._profiles.put(user_key, Profile(fields=stored.fields, consent=consent))

    def _categories(self, targets: Sequence[Integration]) -> frozenset[str]:
        if targets is self._all_targets:
            return self._all_categories
        return frozenset(i.consent_category for i in targets)

    # -- event name -> preset ---------------------------------------------------------------

    @staticmethod
    def _action(event: Event, integration: Integration) -> PresetEvent | None:
        if event.type == "identify":
            return PresetEvent.IDENTIFIED
        if event.type != "track" or event.event is None:
            return None
        return integration.aliases.get(event.event) or _PRESET_NAMES.get(event.event)

    # -- reading identity -----------------------------------------------------------------

    def _candidates(self, event: Event, *, with_properties: bool) -> dict[str, list[_Candidate]]:
        """Identity values by HighLevel field, in precedence order, type- and size-checked."""
        candidates: dict[str, list[_Candidate]] = {}
        if event.traits and event.type not in ("group", "alias"):
            self._read_traits(event.traits, "traits", candidates)
        context_traits = event.context.get("traits")
        if context_traits is not None:
            if not isinstance(context_traits, dict):
                raise _wrong_type("context.traits", "an object", context_traits)
            self._read_traits(context_traits, "context.traits", candidates)
        if with_properties and event.properties:
            self._read_traits(event.properties, "properties", candidates)
        return candidates

    def _read_traits(
        self, container: Mapping[str, object], prefix: str, out: dict[str, list[_Candidate]]
    ) -> None:
        for key, field_name in _TRAITS:
            value = container.get(key)
            if value is not None:
                self._add(out, field_name, f"{prefix}.{key}", value)
        company = container.get("company")
        if isinstance(company, dict):
            name = company.get("name")
            if name is not None:
                self._add(out, "companyName", f"{prefix}.company.name", name)
        elif company is not None:
            self._add(out, "companyName", f"{prefix}.company", company, "a string or an object")
        address = container.get("address")
        if isinstance(address, dict):
            for key, field_name in _ADDRESS:
                value = address.get(key)
                if value is not None:
                    self._add(out, field_name, f"{prefix}.address.{key}", value)
        elif address is not None:
            self._add(out, "address1", f"{prefix}.address", address, "a string or an object")

    def _add(
        self,
        out: dict[str, list[_Candidate]],
        field_name: str,
        path: str,
        value: object,
        expected: str = "a string",
    ) -> None:
        if isinstance(value, str):
            self._check_length(path, value)
            text = value
        elif (
            field_name in _NUMERIC_OK and isinstance(value, int) and not isinstance(value, bool)
        ):
            text = str(value)
        else:
            raise _wrong_type(path, expected, value)
        out.setdefault(field_name, []).append(_Candidate(path, text))

    def _check_length(self, path: str, value: str) -> None:
        if len(value) > self._limits.max_field_chars:
            raise _Invalid(too_long(path, value, self._limits))

    # -- per-integration extras -------------------------------------------------------------

    def _extras(
        self, event: Event, integration: Integration, action: PresetEvent
    ) -> _Extras:
        """(source, tags, custom fields) of a mapped event for one integration."""
        source: str | None = None
        tags: tuple[str, ...] = ()
        if action is PresetEvent.SIGNED_UP:
            source = self._text_property(event, "method")
        elif action is PresetEvent.LEAD_GENERATED:
            source = self._text_property(event, "source")
            tag = self._text_property(event, "lead_tag")
            if tag is not None:
                tags = (tag,)
        custom: dict[str, CustomValue] = {}
        for mapping in integration.custom_fields:
            value = self._custom_value(mapping.source_text, event.lookup(mapping.source))
            if value is not None:
                custom[mapping.field_id] = value
        return source, tags, custom

    def _text_property(self, event: Event, key: str) -> str | None:
        value = event.properties.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _wrong_type(f"properties.{key}", "a string", value)
        self._check_length(f"properties.{key}", value)
        return normalise_text(value)

    def _custom_value(self, path: str, value: object) -> CustomValue | None:
        if value is None:
            return None
        if isinstance(value, str):
            self._check_length(path, value)
            return normalise_text(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            for item in value:
                self._check_length(path, item)
            return tuple(value)
        raise _wrong_type(path, "a string, number or list of strings", value)

    # -- resolution -------------------------------------------------------------------------

    @staticmethod
    def _resolve_common(
        candidates: Mapping[str, list[_Candidate]], stored: Profile
    ) -> dict[str, str]:
        """Every identity field but phone: first usable event value, else the stored one."""
        fields: dict[str, str] = {}
        for field_name, values in candidates.items():
            if field_name == "phone":
                continue
            normalise = _NORMALISERS[field_name]
            for candidate in values:
                normalised = normalise(candidate.value)
                if normalised is not None:
                    fields[field_name] = normalised
                    break
        for field_name, value in stored.fields.items():
            if field_name != "phone" and field_name not in fields:
                fields[field_name] = value
        return fields

    @staticmethod
    def _region(common: Mapping[str, str], default: str | None) -> str | None:
        """Phone region: the resolved country when phonenumbers knows it, else the default."""
        country = common.get("country")
        if country is not None and country in PHONE_REGIONS:
            return country
        return default

    def _phone(
        self,
        candidates: Sequence[_Candidate],
        stored: Profile,
        region: str | None,
        memo: dict[str | None, str | None],
        problems: list[str],
    ) -> str | None:
        """The first event phone that is possible under ``region``, else the stored one.
        ``memo`` caches by region within one event; unusable candidates go to ``problems``."""
        if region in memo:
            return memo[region]
        phone = None
        for candidate in candidates:
            phone = self.phones(candidate.value, region)
            if phone is not None:
                break
            problem = f"{candidate.path} is not a possible phone number" + (
                f" for region {region}" if region else " (no region: add a country or +prefix)"
            )
            if problem not in problems:
                problems.append(problem)
        if phone is None:
            phone = stored.fields.get("phone")
        memo[region] = phone
        return phone


def _no_identifier_error(
    candidates: Mapping[str, list[_Candidate]], removed: frozenset[str], phone_problems: list[str]
) -> str:
    details = [f"{c.path} is not a valid email address" for c in candidates.get("email", ())]
    details += phone_problems
    details += [f"the {name} mapping is removed" for name in ("email", "phone") if name in removed]
    message = "neither a usable email nor phone on the event or in the stored profile"
    return f"{message}: {'; '.join(details)}" if details else message


def _consent_decisions(event: Event, categories: frozenset[str]) -> dict[str, bool]:
    """Consent decisions on the event for ``categories`` (granted -> True). First match wins:
    ``context.consent.canonical``, ``.categories``, ``context.consent[cat]``,
    ``.categoryPreferences``, then RudderStack's ``context.consentManagement`` (denied ids
    checked before allowed ones, so a contradiction errs on the side of do-not-disturb)."""
    context = event.context
    consent = context.get("consent")
    management = context.get("consentManagement")
    if consent is None and management is None:
        return {}
    if consent is not None and not isinstance(consent, dict):
        raise _wrong_type("context.consent", "an object", consent)
    if management is not None and not isinstance(management, dict):
        raise _wrong_type("context.consentManagement", "an object", management)
    decisions: dict[str, bool] = {}
    for category in sorted(categories):
        decision = _consent_decision(consent or {}, management or {}, category)
        if decision is not None:
            decisions[category] = decision
    return decisions


def _consent_decision(
    consent: Mapping[str, object], management: Mapping[str, object], category: str
) -> bool | None:
    for view in ("canonical", "categories"):
        decision = _bool_view(consent, view, category)
        if decision is not None:
            return decision
    direct = consent.get(category)
    if direct is not None:
        if isinstance(direct, bool):
            return direct
        if direct in ("granted", "denied"):
            return direct == "granted"
        raise _wrong_type(f"context.consent.{category}", 'a boolean, "granted" or "denied"', direct)
    decision = _bool_view(consent, "categoryPreferences", category)
    if decision is not None:
        return decision
    for ids_key, granted in (("deniedConsentIds", False), ("allowedConsentIds", True)):
        ids = management.get(ids_key)
        if ids is None:
            continue
        # A list of ids; older RudderStack SDKs send an object keyed by id.
        if not isinstance(ids, list | dict):
            raise _wrong_type(f"context.consentManagement.{ids_key}", "an array", ids)
        if category in ids:
            return granted
    return None


def _bool_view(consent: Mapping[str, object], view: str, category: str) -> bool | None:
    table = consent.get(view)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise _wrong_type(f"context.consent.{view}", "an object", table)
    value = table.get(category)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(f"context.consent.{view}.{category}", "a boolean", value)
