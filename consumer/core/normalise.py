"""Normalisation of identity values to what HighLevel stores, and masking for logs.

Pure functions; the only state is bounded LRU caches: ``PhoneNormaliser``'s (phone parsing
costs about 10 us a call, the rest of mapping an event about as much), and those of the
country and email normalisers. Every normaliser
returns None for "no usable value", which the mapping treats like an absent field.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import date
from functools import cache, lru_cache
from typing import Final

import email_validator
import phonenumbers
import pycountry

# ISO 3166-1 alpha-2, the 249 assigned codes.
ISO_COUNTRIES: Final = frozenset(country.alpha_2 for country in pycountry.countries)

# Names people and collectors write that ISO 3166 (as pycountry knows it: names, official and
# common names, alpha-3 and numeric codes) does not: casefolded, dots removed, spaces single.
_COUNTRY_ALIASES: Final = {
    "uk": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB",
    "usa": "US", "us": "US", "america": "US", "united states": "US",
    "deutschland": "DE", "österreich": "AT", "osterreich": "AT", "schweiz": "CH",
    "suisse": "CH", "svizzera": "CH", "españa": "ES", "espana": "ES", "méxico": "MX",
    "brasil": "BR", "italia": "IT", "nederland": "NL", "holland": "NL",
    "the netherlands": "NL", "polska": "PL", "sverige": "SE", "norge": "NO", "danmark": "DK",
    "suomi": "FI", "éire": "IE", "eire": "IE", "россия": "RU", "russia": "RU",
    "turkey": "TR", "ivory coast": "CI", "macedonia": "MK", "swaziland": "SZ", "burma": "MM",
    "cape verde": "CV", "vatican": "VA", "vatican city": "VA", "brunei": "BN",
    "micronesia": "FM", "palestine": "PS", "dr congo": "CD", "drc": "CD", "uae": "AE",
    "emirates": "AE", "korea": "KR", "south korea": "KR", "republic of korea": "KR",
}  # fmt: skip

# Regions phonenumbers can use as a default region for national-format numbers.
PHONE_REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)

# Characters that are invisible when pasted and make an address fail or differ: zero-width
# space / non-joiner / joiner, word joiner, BOM, soft hyphen.
_INVISIBLE: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_MAX_EMAIL = 254  # RFC 5321 path limit
# The common case, checked without email-validator's 20 us: a lowercase ASCII dot-atom local
# part of at most 64 characters, and hostname labels (no IDNA ``xn--``, no ``--``) under an
# alphabetic top-level domain that is not special-use. Anything else takes the full check.
_PLAIN_EMAIL: Final = re.compile(
    r"(?=[^@]{1,64}@)[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
_SPECIAL_USE: Final = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)
# Where HighLevel is stricter than email-validator (it checks like validator.js isEmail, see
# docs/highlevel.md "Known pitfalls"): at most 64 bytes before the @, a top-level domain of two
# letters or more (or IDNA ``xn--``), and non-ASCII local-part characters only in isEmail's
# ranges (no astral characters such as emoji).
_MAX_LOCAL_BYTES = 64
_TLD: Final = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{2,59}")
_LOCAL_CHARS: Final = re.compile(r"[\x21-\x7e\u00a1-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]+")


def normalise_text(value: str) -> str | None:
    """Trimmed text; None when nothing is left."""
    text = value.strip()
    return text or None


@lru_cache(maxsize=65_536)
def normalise_email(value: str) -> str | None:
    """The address HighLevel should store, lowercased: ``mailto:`` (and any ``?query``) and
    invisible characters (zero-width spaces, soft hyphens, BOMs) removed, the syntax checked
    by email-validator without DNS (``peter..gibbons@example.com``, special-use domains such
    as ``.test`` fail) and no looser than HighLevel's isEmail (64 bytes before the @, a TLD of
    two letters or more), an internationalised domain in its ASCII (IDNA) form. None when
    invalid. Cached (bounded): a full check costs about 20 us."""
    text = value.translate(_INVISIBLE).strip()
    if text[:7].casefold() == "mailto:":
        text = text[7:].partition("?")[0].strip()
    if not text or len(text) > _MAX_EMAIL:
        return None
    lowered = text.lower()
    if (
        _PLAIN_EMAIL.fullmatch(lowered)
        and "--" not in lowered.partition("@")[2]
        and lowered.rpartition(".")[2] not in _SPECIAL_USE
    ):
        return lowered  # what the full check would answer (a property test checks it)
    return _checked_email(text)


def _checked_email(text: str) -> str | None:
    """The full check of ``normalise_email`` (without its fast path): email-validator, then
    where HighLevel is stricter."""
    try:
        checked = email_validator.validate_email(text, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    local, domain = checked.local_part, checked.ascii_domain
    if (
        len(local.encode()) > _MAX_LOCAL_BYTES
        or _TLD.fullmatch(domain.rpartition(".")[2].lower()) is None
        or _LOCAL_CHARS.fullmatch(local) is None
    ):
        return None  # email-validator accepts it, HighLevel (validator.js isEmail) would not
    return f"{local}@{domain}".lower()


# HighLevel's dateOfBirth formats (year first or month first; separators / - . _), and ISO
# date-times, whose date part is taken as written (no timezone conversion).
_DATE_YEAR_FIRST = re.compile(r"(\d{4})([-/._])(\d{1,2})\2(\d{1,2})")
_DATE_MONTH_FIRST = re.compile(r"(\d{1,2})([-/._])(\d{1,2})\2(\d{4})")
_ISO_DATE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ]\d{2}:\d{2}.*")


def normalise_date_of_birth(value: str) -> str | None:
    """``YYYY-MM-DD`` from the formats HighLevel lists for ``dateOfBirth`` (``YYYY/MM/DD``,
    ``MM/DD/YYYY``, with ``/``, ``-``, ``.`` or ``_``) or an ISO date-time (its date part as
    written); None when it is none of these or not a calendar date."""
    text = value.strip()
    if match := _DATE_YEAR_FIRST.fullmatch(text):
        year, month, day = match.group(1), match.group(3), match.group(4)
    elif match := _DATE_MONTH_FIRST.fullmatch(text):
        month, day, year = match.group(1), match.group(3), match.group(4)
    elif match := _ISO_DATE_TIME.fullmatch(text):
        year, month, day = match.groups()
    else:
        return None
    try:
        return date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None


@cache
def _timezones() -> dict[str, str]:
    """IANA zone names by casefolded name. Read once from the tz database (as phonenumbers
    reads its metadata); an empty database makes every timezone unusable, never a wrong one."""
    return {name.casefold(): name for name in zoneinfo.available_timezones()}


def normalise_timezone(value: str) -> str | None:
    """The IANA zone name (``america/new_york`` -> ``America/New_York``); None unless the tz
    database knows it."""
    return _timezones().get(value.strip().casefold())


@lru_cache(maxsize=4096)
def normalise_country(value: str) -> str | None:
    """ISO 3166-1 alpha-2 (``gb`` -> ``GB``) from a code, an alpha-3 or numeric code, an English
    name (``United States``, ``Germany``) or a common alias (``UK``, ``USA``, ``Deutschland``);
    None for anything unrecognised. Cached (bounded): pycountry's lookup is slow."""
    text = value.strip()
    code = text.upper()
    if code in ISO_COUNTRIES:
        return code
    folded = " ".join(text.casefold().replace(".", "").split()).removeprefix("the ")
    alias = _COUNTRY_ALIASES.get(folded)
    if alias is not None:
        return alias
    if len(folded) < 3:  # two letters that are not a code: never a name
        return None
    for name in dict.fromkeys((text, folded)):  # as written ("Virgin Islands, U.S."), folded
        try:
            alpha_2: str = pycountry.countries.lookup(name).alpha_2
        except LookupError:
            continue
        return alpha_2
    return None


def parse_phone(value: str, region: str | None) -> str | None:
    """E.164 when ``value`` parses as a *possible* number (length plausible for its country:
    ``is_possible_number_with_reason`` says IS_POSSIBLE, so local-only and too-short numbers
    fail; not necessarily assigned, so the guide's ``+44 7700 900123`` passes) using
    ``region`` for national-format numbers; None otherwise. A ``tel:`` URI is read as its
    number. Uncached: use ``PhoneNormaliser``."""
    text = value.strip()
    if text[:4].casefold() == "tel:":
        text = "tel:" + text[4:]  # phonenumbers reads RFC 3966 URIs, lowercase scheme only
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


class PhoneNormaliser:
    """``parse_phone`` behind a bounded LRU cache keyed by (value, region).

    One per mapper; not thread-safe beyond what ``functools.lru_cache`` guarantees (its
    bookkeeping is safe, a miss may be computed twice). ``cache_info()`` exposes hits and misses
    for metrics.
    """

    def __init__(self, cache_size: int) -> None:
        self._parse = lru_cache(maxsize=cache_size)(parse_phone)

    def __call__(self, value: str, region: str | None) -> str | None:
        return self._parse(value, region)

    def cache_info(self) -> tuple[int, int, int]:
        """(hits, misses, current size) of the cache."""
        info = self._parse.cache_info()
        return info.hits, info.misses, info.currsize


def mask_email(email: str) -> str:
    """For logs: first character of the local part, then ``***``: ``s***@example.com``."""
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(phone: str) -> str:
    """For logs: keep the first two and last four characters, star the rest, length kept:
    ``+14155550142`` -> ``+1******0142``. Short values are starred entirely."""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:2] + "*" * (len(phone) - 6) + phone[-4:]


# Anything shaped like an email, or like a phone number (optional +, 7 to 15 digits with
# spaces, dots, dashes or brackets between them, not inside a word: "t-6e512121905e", a topic
# name, or "2026-12-06T18:29", a time, are left alone), in free text.
_EMAIL_IN_TEXT: Final = re.compile(r"[^\s@<>\"',;:()\[\]]+@[^\s@<>\"',;:()\[\]]+")
_PHONE_IN_TEXT: Final = re.compile(r"(?<![\w+])\+?\d(?:[\s().-]?\d){6,14}(?!\w)")


def mask_text(text: str) -> str:
    """For logs and the debugger: ``text`` with every email-like substring masked by
    ``mask_email`` and every phone-like one (7 to 15 digits) by ``mask_phone``."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), text)
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), text)
