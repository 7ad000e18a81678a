"""Map step: a decoded event plus the user's stored profile -> one outcome per routed target.

Rules (``docs/architecture.md``, "Mapping rules" and "Profiles"; how fields are read from the
event: ``consumer.core.extract``):

- Default preset: identify / "Identified" / "Signed Up" / "Lead Generated" upsert, everything
  else is dropped as ``not_mapped``; aliases map other event names onto these.
- Per target: its phone region, consent category (no decision known: no ``dnd`` key; consent
  mode ``deny_only``: a grant sends none either), static tags and source, removed fields and
  custom fields; no usable email or phone -> ``no_identifier`` for that target.
- Field-level tolerance: an unusable field is left out and listed in ``ContactUpsert.omitted``
  (fields a target removes are not listed); only the envelope (``decode``), a missing user
  and ``no_identifier`` reject.
- Identity stitching: the profile stored under an event's anonymousId (when the user key is
  another id) or under an alias's ``previousId`` is merged into the user's, once. Across
  partitions (``stitch_across``: partitioned profile state, where that profile may live in
  another partition) a profile not held here is reported (``take_unstitched``) for the engine
  to ask for through the stitch topic (``consumer.core.stitch``); ``hand_over`` and ``fold``
  are the two ends of that exchange.
- The profile is updated from every routed, valid, non-duplicate event (also ones not mapped
  or rejected for ``no_identifier``), so consent and traits seen on page views count later.

Pure apart from the profile store and deduper it is handed; deterministic for the same inputs.
Called by the engine on its mapping thread, and by ``ghl-consumer map``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from consumer.core.decode import Limits, decode
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import (
    ConsentMode,
    ContactUpsert,
    Drop,
    Event,
    FieldValue,
    OmitReason,
    Omitted,
    Outcome,
    PresetEvent,
    Reason,
    Reject,
)
from consumer.core.extract import (
    Candidate,
    Extras,
    consent_decisions,
    no_identifier_error,
    phone_region,
    read_candidates,
    read_extras,
    resolve_common,
)
from consumer.core.normalise import PhoneNormaliser
from consumer.core.profiles import EMPTY_PROFILE, InMemoryProfileStore, Profile, ProfileStore
from consumer.core.routing import Router
from consumer.core.targets import Target

_PRESET_NAMES: Final = {p.value: p for p in PresetEvent}


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingOptions:
    """How a mapper is built: input limits, the phone cache, the deduper's bounds and the
    default profile store's bound. ``MappingSettings.options()`` builds it from ``[mapping]``."""

    limits: Limits = Limits()  # noqa: RUF009 - frozen value
    phone_cache_size: int = 65_536
    dedupe_max_entries: int = 100_000
    dedupe_ttl_seconds: float = 86_400.0
    profile_max_entries: int = 1_000_000


def build_mapper(
    targets: Sequence[Target],
    options: MappingOptions,
    profiles: ProfileStore | None = None,
    *,
    stitch_across: bool = False,
) -> Mapper:
    """A mapper for ``targets`` with an empty deduper and ``profiles`` (default: an empty
    in-memory store bounded by ``options.profile_max_entries``); ``stitch_across``: see
    ``Mapper``."""
    if profiles is None:  # not ``or``: an empty store is falsy (it has a length)
        profiles = InMemoryProfileStore(options.profile_max_entries)
    return Mapper(
        targets,
        profiles=profiles,
        deduper=MessageDeduper(
            max_entries=options.dedupe_max_entries, ttl_seconds=options.dedupe_ttl_seconds
        ),
        limits=options.limits,
        phone_cache_size=options.phone_cache_size,
        stitch_across=stitch_across,
    )


_NOT_ROUTED: Final = Drop(Reason.NOT_ROUTED)
_DUPLICATE: Final = Drop(Reason.DUPLICATE)
_NO_USER: Final = Reject(
    Reason.INVALID_EVENT,
    "no user: the record has no key and the event has no userId or anonymousId",
)


def _previous_id(event: Event, limits: Limits) -> str | None:
    """An alias event's ``previousId`` (a string or integer within the size limit), else None."""
    value = event.raw.get("previousId")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value and len(value) <= limits.max_field_chars:
        return value
    return None


def _contact_key(key: bytes | None) -> str | None:
    """A record key as the contact key: any bytes (not UTF-8: backslash escapes); empty or
    absent -> None."""
    return key.decode("utf-8", "backslashreplace") if key else None


def user_key_of(key: bytes | None, event: Event) -> str | None:
    """The user key a record maps under: its key (``_contact_key``), else the event's userId,
    else its anonymousId; None when it has none."""
    return _contact_key(key) or event.user_id or event.anonymous_id


def _stitch_sources(event: Event, user_key: str, limits: Limits) -> tuple[str, ...]:
    """The keys whose stored profiles mapping ``event`` folds into ``user_key``'s (identity
    stitching, ``Mapper._stitch``): its anonymousId, an alias's previousId; in that order."""
    sources = []
    if event.anonymous_id is not None and event.anonymous_id != user_key:
        sources.append(event.anonymous_id)
    if event.type == "alias":
        previous = _previous_id(event, limits)
        if previous is not None and previous != user_key:
            sources.append(previous)
    return tuple(sources)


class Mapper:
    """Maps records to outcomes for ``targets``.

    ``map_record`` is the engine's entry point; it never raises for any record content. It reads
    and updates ``profiles`` and ``deduper``; it is not thread-safe (one mapper per thread).

    ``stitch_across`` (partitioned profile state: ``profiles`` holds the partition of the record
    being mapped): a profile to stitch that is not held here at all may be in another
    partition. The mapper then records ``(its key, the user key)`` for ``take_unstitched`` and
    stores an empty profile under that key here, so that it is asked for once from this
    partition, not for every later event naming it (as a local stitch empties it).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        profiles: ProfileStore,
        deduper: MessageDeduper,
        limits: Limits = Limits(),  # noqa: B008 - frozen value
        phone_cache_size: int = 65_536,
        stitch_across: bool = False,
    ) -> None:
        self._router = Router(targets)
        self._stitch_across = stitch_across
        self._unstitched: list[tuple[str, str]] = []
        self._profiles = profiles
        self._deduper = deduper
        self._limits = limits
        self.phones = PhoneNormaliser(phone_cache_size)  # cache_info() for metrics
        # Outcomes are immutable values: build the frequent ones once.
        self._not_mapped = {t.id: Drop(Reason.NOT_MAPPED, t.id) for t in targets}
        self._all_targets = self._router.route_all
        self._all_categories = tuple(sorted({t.consent_category for t in targets}))

    def map_record(
        self,
        *,
        value: bytes,
        key: bytes | None,
        topic: str,
        now: float,
        origin: Hashable | None = None,
        replay_of: str | None = None,
    ) -> list[Outcome]:
        """Decode and map one record. Returns one record-level Drop/Reject, or one outcome per
        routed target (in configuration order). ``origin`` names the record (topic,
        partition, offset) for de-duplication: the same record mapped again is not a
        duplicate of itself. ``replay_of``: the record's ``ghl.replayed_from`` header
        (``consumer.core.deadletter.replayed_from``): a replayed dead letter is never a
        duplicate of its original (``consumer.core.dedupe``).

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
        return self.map_event(
            event,
            contact_key=_contact_key(key),
            topic=topic,
            now=now,
            origin=origin,
            replay_of=replay_of,
        )

    def profile(self, user_key: str) -> Profile | None:
        """The profile stored for ``user_key`` now (read-only use: ``ghl-consumer audit``)."""
        return self._profiles.get(user_key)

    def identity_of(self, *, value: bytes, key: bytes | None) -> tuple[str, tuple[str, ...]]:
        """The user key a record maps under (its key, else userId, else anonymousId) and the
        keys whose stored profiles mapping it may fold into that key's (identity stitching:
        its anonymousId, an alias's previousId). ``("", ())`` when the record does not decode
        or has no user key. Pure: reads neither the profiles nor the deduper; for
        ``ghl-consumer audit``, which must know which records depend on another key's
        history."""
        if key is not None and len(key) > self._limits.max_field_chars:
            return "", ()
        event = decode(value, self._limits)
        if isinstance(event, Reject):
            return "", ()
        user_key = user_key_of(key, event)
        if user_key is None:
            return "", ()
        return user_key, _stitch_sources(event, user_key, self._limits)

    def map_event(
        self,
        event: Event,
        *,
        contact_key: str | None,
        topic: str,
        now: float,
        origin: Hashable | None = None,
        replay_of: str | None = None,
    ) -> list[Outcome]:
        """Map a decoded event. ``contact_key`` is the record key if any; else the event's
        userId, else anonymousId, is used. ``origin``, ``replay_of``: as for ``map_record``."""
        targets = self._router.route(event, topic)
        if not targets:
            return [_NOT_ROUTED]
        user_key = contact_key or event.user_id or event.anonymous_id
        if user_key is None:
            return [_NO_USER]
        if event.message_id is not None and self._deduper.check(
            user_key, event.message_id, now, origin, replay_of
        ):
            return [_DUPLICATE]
        for other_key in _stitch_sources(event, user_key, self._limits):
            self._stitch(other_key, user_key)
        actions = [self._action(event, target) for target in targets]
        mapped = any(action is not None for action in actions)
        limits = self._limits
        omitted: list[Omitted] = []  # event-level: identity fields and consent
        candidates = read_candidates(
            event, limits, omitted, with_properties=mapped and event.type == "track"
        )
        decisions = consent_decisions(event, self._categories(targets), omitted)
        if not mapped and not candidates:
            # The common analytics event: nothing to send; at most a consent decision to keep.
            if decisions:
                self._remember_consent(user_key, decisions)
            return [self._not_mapped[target.id] for target in targets]
        extras = [
            read_extras(event, target, action, limits) if action is not None else None
            for target, action in zip(targets, actions, strict=True)
        ]
        label = event.event if event.type == "track" and event.event else event.type
        message_ids = () if event.message_id is None else (event.message_id,)
        return self._map_identity(
            event, user_key, label, message_ids, targets, extras, candidates, decisions, omitted
        )

    def _map_identity(
        self,
        event: Event,
        user_key: str,
        label: str,
        message_ids: tuple[str, ...],
        targets: Sequence[Target],
        extras: Sequence[Extras | None],
        candidates: Mapping[str, list[Candidate]],
        decisions: Mapping[str, bool],
        omitted: list[Omitted],
    ) -> list[Outcome]:
        stored = self._profiles.get(user_key) or EMPTY_PROFILE
        common = resolve_common(candidates, stored, omitted)
        phone_candidates = candidates.get("phone", ())
        phones: dict[str | None, tuple[str | None, Omitted | None]] = {}  # by region

        outcomes: list[Outcome] = []
        for target, extra in zip(targets, extras, strict=True):
            if extra is None:
                outcomes.append(self._not_mapped[target.id])
                continue
            fields: dict[str, FieldValue] = dict(common)
            region = phone_region(common, candidates, target.default_phone_region)
            phone, phone_omitted = self._phone(phone_candidates, region, phones)
            phone = phone or stored.fields.get("phone")
            if phone is not None:
                fields["phone"] = phone
            source, tags, custom, extra_omitted = extra
            source = target.static_source or source or target.default_source
            if source is not None:
                fields["source"] = source
            # As HighLevel stores them (trimmed, lowercased): what is sent is what it keeps.
            tags = tuple(
                dict.fromkeys(
                    tag for t in (*target.static_tags, *tags) if (tag := t.strip().lower())
                )
            )
            category = target.consent_category
            granted = decisions.get(category, stored.consent.get(category))
            if granted is False or (granted and target.consent_mode is ConsentMode.BOTH):
                fields["dnd"] = not granted
            removed = target.removed_fields
            for name in removed:
                fields.pop(name, None)
            found = [*omitted, *([phone_omitted] if phone_omitted else []), *extra_omitted]
            reported = [item for item in found if item.field not in removed]
            if "email" not in fields and "phone" not in fields:
                error = no_identifier_error(reported, removed)
                outcomes.append(Reject(Reason.NO_IDENTIFIER, error, target.id))
                continue
            location_id = target.location_id
            if target.location_path is not None:
                named = event.lookup(target.location_path)
                if not isinstance(named, str) or not named.strip():
                    path = ".".join(target.location_path)
                    error = f"{path}: expected a location id (a non-empty string)"
                    outcomes.append(Reject(Reason.UNKNOWN_LOCATION, error, target.id))
                    continue
                location_id = named.strip()
            outcomes.append(
                ContactUpsert(
                    integration_id=target.id,
                    location_id=location_id,
                    contact_key=user_key,
                    fields=fields,
                    tags=() if "tags" in removed else tags,
                    custom_fields=custom,
                    tag_mode=target.tag_mode,
                    events=(label,),
                    omitted=tuple(reported),
                    message_ids=message_ids,
                )
            )

        # Remember the phone as E.164: parsed with the first routed target's region under which
        # it is a possible number (a national-format number needs a region to mean anything).
        remembered = dict(common)
        for target in targets:
            region = phone_region(common, candidates, target.default_phone_region)
            phone, _ = self._phone(phone_candidates, region, phones)
            if phone is not None:
                remembered["phone"] = phone
                break
        else:
            if "phone" in stored.fields:
                remembered["phone"] = stored.fields["phone"]
        consent = {**stored.consent, **decisions} if decisions else stored.consent
        if remembered != stored.fields or consent != stored.consent:
            self._profiles.put(user_key, Profile(fields=remembered, consent=consent))
        return outcomes

    def take_unstitched(self) -> list[tuple[str, str]]:
        """The stitches found since the last call whose source profile is not held here
        (``stitch_across`` only): ``(source key, user key)``, in the order met. The engine
        asks for each through the stitch topic."""
        if not self._unstitched:
            return []
        unstitched, self._unstitched = self._unstitched, []
        return unstitched

    def hand_over(self, key: str) -> Profile | None:
        """The stitch topic's request, on the member holding ``key``'s profile: that profile
        when it holds anything, which is then emptied (handed over once); else None."""
        other = self._profiles.get(key)
        if other is None or not (other.fields or other.consent):
            return None
        self._profiles.put(key, EMPTY_PROFILE)
        return other

    def fold(self, user_key: str, other: Profile) -> bool:
        """Fold ``other`` into ``user_key``'s profile: the user's own values win, ``other``
        fills the gaps. Idempotent. Returns whether the user's profile changed."""
        stored = self._profiles.get(user_key) or EMPTY_PROFILE
        merged = Profile(
            fields={**other.fields, **stored.fields}, consent={**other.consent, **stored.consent}
        )
        if merged == stored:
            return False
        self._profiles.put(user_key, merged)
        return True

    def _stitch(self, other_key: str, user_key: str) -> None:
        """Identity stitching: fold the profile stored under ``other_key`` (an anonymousId now
        seen with a userId, or an alias's previousId) into ``user_key``'s. The user's own
        values win; the other profile fills the gaps and is then emptied, so it is merged once
        and a later user of the same device id does not inherit it. Not held here at all, with
        ``stitch_across``: reported for the stitch topic (see the class doc)."""
        other = self._profiles.get(other_key)
        if other is None:
            if self._stitch_across:
                self._unstitched.append((other_key, user_key))
                self._profiles.put(other_key, EMPTY_PROFILE)
            return
        if other.fields or other.consent:
            self.fold(user_key, other)
            self._profiles.put(other_key, EMPTY_PROFILE)

    def _remember_consent(self, user_key: str, decisions: Mapping[str, bool]) -> None:
        if self._profiles.consent_holds(user_key, decisions):
            return  # the common case: the user's consent as before
        stored = self._profiles.get(user_key) or EMPTY_PROFILE
        consent = {**stored.consent, **decisions}
        if consent != stored.consent:
            self._profiles.put(user_key, Profile(fields=stored.fields, consent=consent))

    def _categories(self, targets: Sequence[Target]) -> tuple[str, ...]:
        """The consent categories of ``targets``, distinct and sorted."""
        if targets is self._all_targets:
            return self._all_categories
        return tuple(sorted({t.consent_category for t in targets}))

    @staticmethod
    def _action(event: Event, target: Target) -> PresetEvent | None:
        """The preset an event maps as for ``target`` (its aliases first), or None."""
        if event.type == "identify":
            return PresetEvent.IDENTIFIED
        if event.type != "track" or event.event is None:
            return None
        return target.aliases.get(event.event) or _PRESET_NAMES.get(event.event)

    def _phone(
        self,
        candidates: Sequence[Candidate],
        region: str | None,
        memo: dict[str | None, tuple[str | None, Omitted | None]],
    ) -> tuple[str | None, Omitted | None]:
        """(the first event phone that is possible under ``region``, else None; why the first
        unusable one was left out, when none is usable). ``memo`` caches by region within one
        event."""
        if region in memo:
            return memo[region]
        result: tuple[str | None, Omitted | None] = (None, None)
        for candidate in candidates:
            if candidate.problem is None:
                phone = self.phones(candidate.value, region)
                if phone is not None:
                    result = (phone, None)
                    break
                if not candidate.value.strip():
                    continue
            if result[1] is None:
                reason = candidate.problem or (
                    OmitReason.NO_REGION
                    if region is None and not candidate.value.lstrip().startswith("+")
                    else OmitReason.INVALID
                )
                result = (None, Omitted("phone", reason, candidate.path))
        memo[region] = result
        return result
