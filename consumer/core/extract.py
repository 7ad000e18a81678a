"""Field extraction: what one event says, field by field, type-, size- and value-checked.

Rules (``docs/architecture.md``, "Mapping rules"):

- Identity fields come from, highest precedence first: ``traits`` (not on group/alias calls,
  whose traits describe a group), ``context.traits``, ``properties`` (only for track events a
  target maps), then the stored profile. Per field the first *usable* value wins (an invalid
  email in ``traits`` falls through to ``context.traits``). Trait names: ``TRAIT_NAMES``, in
  precedence order within one container; a top-level ``city`` wins over ``address.city``.
- Consent for a target's category (names matched ignoring case): first decision on the event
  (``context.consent`` views, then RudderStack's ``context.consentManagement``), else the last
  known one, else none.
- Field-level tolerance: a value of the wrong JSON type, a string over ``max_field_chars`` or
  an invalid value is left out and reported as an ``Omitted`` (field, reason, path) in the
  ``omitted`` list the readers are handed; it never rejects the event. A field is reported
  when the event carried a value for it and none was usable (reason: the first unusable one);
  blank strings count as absent.

Pure functions of their arguments; ``consumer.core.mapping`` calls them and decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from consumer.core.decode import Limits
from consumer.core.events import (
    IDENTITY_FIELDS,
    CustomValue,
    Event,
    OmitReason,
    Omitted,
    PresetEvent,
)
from consumer.core.normalise import (
    PHONE_REGIONS,
    normalise_country,
    normalise_date_of_birth,
    normalise_email,
    normalise_text,
    normalise_timezone,
)
from consumer.core.profiles import Profile
from consumer.core.targets import Target

# The one table of trait names collectors write, per HighLevel field, highest precedence
# first within one container (snake_case before camelCase). Each name is also accepted
# lowercased and capitalised (``firstName``, ``firstname``, ``FirstName``, ``Firstname``).
TRAIT_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "email": ("email", "email_address", "emailAddress"),
    "phone": ("phone", "phone_number", "phoneNumber", "mobile", "mobile_phone", "mobilePhone"),
    "firstName": ("first_name", "firstName", "given_name", "givenName"),
    "lastName": ("last_name", "lastName", "family_name", "familyName", "surname"),
    "name": ("name", "full_name", "fullName"),
    "companyName": ("company_name", "companyName"),  # and ``company``: see _read_traits
    "address1": ("address1", "address_1", "address_line1", "addressLine1", "street"),
    "city": ("city",),
    "state": ("state", "province"),
    "postalCode": (
        "postal_code", "postalCode", "zip", "zipcode", "zip_code", "zipCode", "postcode",
        "post_code",
    ),
    "country": ("country", "country_code", "countryCode"),
    "website": ("website",),
    "dateOfBirth": ("birthday", "date_of_birth", "dateOfBirth", "dob", "birthdate", "birth_date"),
    "timezone": ("timezone", "time_zone", "timeZone"),
    "gender": ("gender",),
}
# Inside ``address`` (Segment's reserved trait): the same, with ``line1``/``line2``.
ADDRESS_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "address1": ("line1", "line_1", "street", "address1", "street1"),
    "city": TRAIT_NAMES["city"],
    "state": TRAIT_NAMES["state"],
    "postalCode": TRAIT_NAMES["postalCode"],
    "country": TRAIT_NAMES["country"],
}
_LINE2: Final = ("line2", "line_2", "street2", "address2")


def _spellings(names: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[int, str]]:
    """key as sent -> (rank, HighLevel field): every name with its lower/capitalised variants."""
    table: dict[str, tuple[int, str]] = {}
    for field_name, bases in names.items():
        for base in bases:
            for key in (base, base.lower(), base[:1].upper() + base[1:], base.capitalize()):
                table.setdefault(key, (len(table), field_name))
    return table


_TRAIT_KEYS: Final = _spellings(TRAIT_NAMES)
_ADDRESS_KEYS: Final = _spellings(ADDRESS_NAMES)
_COMPANY_KEYS: Final = frozenset(("company", "Company"))
_ADDRESS_OBJECT_KEYS: Final = frozenset(("address", "Address"))
_LINE2_KEYS: Final = frozenset(k for base in _LINE2 for k in (base, base.capitalize()))
# Ranks: top-level names first, then ``company``, then ``address`` (and its fields).
_COMPANY_RANK: Final = len(_TRAIT_KEYS)
_ADDRESS_RANK: Final = _COMPANY_RANK + 1
# Fields where a JSON number is accepted and used as its decimal text.
_NUMERIC_OK: Final = frozenset(("phone", "postalCode"))
_EXACT_FLOAT: Final = 2.0**53
# Every identity field but phone (its normalisation depends on a region): text is trimmed.
_NORMALISERS: Final[dict[str, Callable[[str], str | None]]] = {
    **{name: normalise_text for name in IDENTITY_FIELDS if name != "phone"},
    "email": normalise_email,
    "country": normalise_country,
    "dateOfBirth": normalise_date_of_birth,
    "timezone": normalise_timezone,
}

# (source, tags, custom fields, omitted) of a mapped event for one target
Extras = tuple[str | None, tuple[str, ...], dict[str, CustomValue], list[Omitted]]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One value for an identity field, as found on the event: ``value`` is its text, or
    ``problem`` says why it is unusable as sent (wrong type, too long; ``value`` is then "")."""

    path: str  # where it was read
    value: str
    problem: OmitReason | None = None


def _text(value: object, limits: Limits, *, numeric: bool = False) -> str | OmitReason:
    """A string within the size limit (or, with ``numeric``, an integer, or a float holding
    an exact integer, as its digits), else why not."""
    if isinstance(value, str):
        return value if len(value) <= limits.max_field_chars else OmitReason.TOO_LONG
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if numeric and isinstance(value, float):
        # 94103.0 is 94103; 94103.5, or a float beyond 2**53 (digits already lost), is not.
        exact = value.is_integer() and abs(value) <= _EXACT_FLOAT
        return str(int(value)) if exact else OmitReason.INVALID
    return OmitReason.WRONG_TYPE


# -- identity ------------------------------------------------------------------------------


def read_candidates(
    event: Event, limits: Limits, omitted: list[Omitted], *, with_properties: bool
) -> dict[str, list[Candidate]]:
    """Identity values by HighLevel field, in precedence order. A ``context.traits`` that is
    not an object goes to ``omitted`` (field ``traits``)."""
    candidates: dict[str, list[Candidate]] = {}
    if event.traits and event.type not in ("group", "alias"):
        _read_traits(event.traits, "traits", candidates, limits)
    context_traits = event.context.get("traits")
    if isinstance(context_traits, dict):
        _read_traits(context_traits, "context.traits", candidates, limits)
    elif context_traits is not None:
        omitted.append(Omitted("traits", OmitReason.WRONG_TYPE, "context.traits"))
    if with_properties and event.properties:
        _read_traits(event.properties, "properties", candidates, limits)
    return candidates


# (rank, HighLevel field, path, value as sent)
_Found = tuple[int, str, str, object]


def _read_traits(
    container: Mapping[str, object],
    prefix: str,
    out: dict[str, list[Candidate]],
    limits: Limits,
) -> None:
    # Walk the container's keys (few) rather than the table (many), then add in table order.
    found: list[_Found] = []
    for key, value in container.items():
        if value is None:
            continue
        spec = _TRAIT_KEYS.get(key)
        if spec is not None:
            found.append((*spec, f"{prefix}.{key}", value))
        elif key in _COMPANY_KEYS:
            if isinstance(value, dict):
                name = value.get("name")
                if name is not None:
                    found.append((_COMPANY_RANK, "companyName", f"{prefix}.{key}.name", name))
            else:
                found.append((_COMPANY_RANK, "companyName", f"{prefix}.{key}", value))
        elif key in _ADDRESS_OBJECT_KEYS:
            if isinstance(value, dict):
                found.extend(_read_address(value, f"{prefix}.{key}", limits))
            else:
                found.append((_ADDRESS_RANK, "address1", f"{prefix}.{key}", value))
    found.sort(key=lambda item: item[0])
    for _rank, field_name, path, value in found:
        text = _text(value, limits, numeric=field_name in _NUMERIC_OK)
        candidate = (
            Candidate(path, "", text) if isinstance(text, OmitReason) else Candidate(path, text)
        )
        out.setdefault(field_name, []).append(candidate)


def _read_address(address: Mapping[str, object], prefix: str, limits: Limits) -> list[_Found]:
    """Fields of an ``address`` object, ranked after every top-level trait; a usable ``line2``
    is joined to the street line with ``", "`` (an unusable one is ignored)."""
    found: list[_Found] = []
    line2: str | None = None
    for key, value in address.items():
        if value is None:
            continue
        spec = _ADDRESS_KEYS.get(key)
        if spec is not None:
            rank, field_name = spec
            found.append((_ADDRESS_RANK + 1 + rank, field_name, f"{prefix}.{key}", value))
        elif key in _LINE2_KEYS and isinstance(value, str):
            line2 = normalise_text(value)
    if line2 is not None:
        found = [
            (rank, name, path, f"{value.strip()}, {line2}")
            if name == "address1" and isinstance(value, str) and value.strip()
            else (rank, name, path, value)
            for rank, name, path, value in found
        ]
    return found


def resolve_common(
    candidates: Mapping[str, list[Candidate]], stored: Profile, omitted: list[Omitted]
) -> dict[str, str]:
    """Every identity field but phone: first usable event value, else the stored one. A field
    with event values none of which is usable goes to ``omitted``."""
    fields: dict[str, str] = {}
    for field_name, values in candidates.items():
        if field_name == "phone":
            continue
        normalise = _NORMALISERS[field_name]
        first_problem: Omitted | None = None
        for candidate in values:
            if candidate.problem is None:
                normalised = normalise(candidate.value)
                if normalised is not None:
                    fields[field_name] = normalised
                    break
                if not candidate.value.strip():
                    continue  # blank: absent, not invalid
            if first_problem is None:
                problem = candidate.problem or OmitReason.INVALID
                first_problem = Omitted(field_name, problem, candidate.path)
        else:
            if first_problem is not None:
                omitted.append(first_problem)
    for field_name, value in stored.fields.items():
        if field_name != "phone" and field_name not in fields:
            fields[field_name] = value
    return fields


def phone_region(
    common: Mapping[str, str], candidates: Mapping[str, list[Candidate]], default: str | None
) -> str | None:
    """The region national-format phones are read in: the resolved country (event, else
    profile) when phonenumbers knows it; None when the event names a country that cannot be
    used (unknown, or no phone region), so such a number is omitted rather than guessed; the
    integration's ``default`` only when no country is known at all."""
    country = common.get("country")
    if country is not None:
        return country if country in PHONE_REGIONS else None
    named = any(c.problem or c.value.strip() for c in candidates.get("country", ()))
    return None if named else default


_PROBLEMS: Final = {
    **{(name, OmitReason.WRONG_TYPE): "has the wrong type" for name in ("email", "phone")},
    **{(name, OmitReason.TOO_LONG): "is too long" for name in ("email", "phone")},
    ("email", OmitReason.INVALID): "is not a valid email address",
    ("phone", OmitReason.INVALID): "is not a possible phone number",
    ("phone", OmitReason.NO_REGION): "is in national format and no region is known "
    "(add a country or a +prefix)",
}


def no_identifier_error(omitted: Sequence[Omitted], removed: frozenset[str]) -> str:
    """The ``no_identifier`` reject's message: why no email or phone was usable."""
    details: list[str] = []
    for item in omitted:
        if item.field in ("email", "phone"):
            details.append(f"{item.path} {_PROBLEMS[item.field, item.reason]}")
    details += [f"the {name} mapping is removed" for name in ("email", "phone") if name in removed]
    message = "neither a usable email nor phone on the event or in the stored profile"
    return f"{message}: {'; '.join(details)}" if details else message


# -- per-target extras ---------------------------------------------------------------------


def read_extras(event: Event, target: Target, action: PresetEvent, limits: Limits) -> Extras:
    """(source, tags, custom fields, omitted) of an event mapped as ``action`` for
    ``target``."""
    omitted: list[Omitted] = []
    source: str | None = None
    tags: tuple[str, ...] = ()
    if action is PresetEvent.SIGNED_UP:
        source = _text_property(event, "method", "source", limits, omitted)
    elif action is PresetEvent.LEAD_GENERATED:
        source = _text_property(event, "source", "source", limits, omitted)
        tag = _text_property(event, "lead_tag", "tags", limits, omitted)
        if tag is not None:
            tags = (tag,)
    custom: dict[str, CustomValue] = {}
    for mapping in target.custom_fields:
        value = _custom_value(event.lookup(mapping.source), limits)
        if isinstance(value, OmitReason):
            omitted.append(Omitted("customFields", value, mapping.source_text))
        elif value is not None:
            custom[mapping.field_id] = value
    return source, tags, custom, omitted


def _text_property(
    event: Event, key: str, field_name: str, limits: Limits, omitted: list[Omitted]
) -> str | None:
    value = event.properties.get(key)
    if value is None:
        return None
    text = _text(value, limits)
    if isinstance(text, OmitReason):
        omitted.append(Omitted(field_name, text, f"properties.{key}"))
        return None
    return normalise_text(text)


def _custom_value(value: object, limits: Limits) -> CustomValue | OmitReason | None:
    if value is None:
        return None
    if isinstance(value, str):
        return normalise_text(value) if len(value) <= limits.max_field_chars else (
            OmitReason.TOO_LONG
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if any(len(item) > limits.max_field_chars for item in value):
            return OmitReason.TOO_LONG
        return tuple(value)
    return OmitReason.WRONG_TYPE


# -- consent -------------------------------------------------------------------------------


def consent_decisions(
    event: Event, categories: Sequence[str], omitted: list[Omitted]
) -> dict[str, bool]:
    """Consent decisions on the event for ``categories`` (distinct, sorted: the decisions
    come in that order; granted -> True). First match wins:
    ``context.consent.canonical``, ``.categories``, ``context.consent[cat]``,
    ``.categoryPreferences``, then RudderStack's ``context.consentManagement`` (denied ids
    checked before allowed ones, so a contradiction errs on the side of do-not-disturb). A
    malformed source is skipped and goes to ``omitted`` (field ``dnd``)."""
    context = event.context
    consent = context.get("consent")
    management = context.get("consentManagement")
    if consent is None and management is None:
        return {}
    if consent is not None and not isinstance(consent, dict):
        _omit_consent(omitted, "context.consent")
        consent = None
    if management is not None and not isinstance(management, dict):
        _omit_consent(omitted, "context.consentManagement")
        management = None
    decisions: dict[str, bool] = {}
    for category in categories:
        decision = _consent_decision(consent or {}, management or {}, category, omitted)
        if decision is not None:
            decisions[category] = decision
    return decisions


def _omit_consent(omitted: list[Omitted], path: str) -> None:
    item = Omitted("dnd", OmitReason.WRONG_TYPE, path)
    if item not in omitted:
        omitted.append(item)


def _consent_decision(
    consent: Mapping[str, object],
    management: Mapping[str, object],
    category: str,
    omitted: list[Omitted],
) -> bool | None:
    for view in ("canonical", "categories"):
        decision = _bool_view(consent, view, category, omitted)
        if decision is not None:
            return decision
    direct = _get_category(consent, category)
    if isinstance(direct, bool):
        return direct
    if direct in ("granted", "denied"):
        return direct == "granted"
    if direct is not None:
        _omit_consent(omitted, f"context.consent.{category}")
    decision = _bool_view(consent, "categoryPreferences", category, omitted)
    if decision is not None:
        return decision
    for ids_key, granted in (("deniedConsentIds", False), ("allowedConsentIds", True)):
        ids = management.get(ids_key)
        if ids is None:
            continue
        # A list of ids; older RudderStack SDKs send an object keyed by id.
        if not isinstance(ids, list | dict):
            _omit_consent(omitted, f"context.consentManagement.{ids_key}")
            continue
        if category in ids or any(
            isinstance(id_, str) and id_.casefold() == category.casefold() for id_ in ids
        ):
            return granted
    return None


def _bool_view(
    consent: Mapping[str, object], view: str, category: str, omitted: list[Omitted]
) -> bool | None:
    table = consent.get(view)
    if table is None:
        return None
    if not isinstance(table, dict):
        _omit_consent(omitted, f"context.consent.{view}")
        return None
    value = _get_category(table, category)
    if value is None or isinstance(value, bool):
        return value
    _omit_consent(omitted, f"context.consent.{view}.{category}")
    return None


def _get_category(table: Mapping[str, object], category: str) -> object | None:
    """``table[category]``, else the first key equal to it ignoring case (Segment's docs
    capitalise category ids: ``Marketing``)."""
    value = table.get(category)
    if value is not None:
        return value
    folded = category.casefold()
    for key, candidate in table.items():
        if key.casefold() == folded and candidate is not None:
            return candidate
    return None
