"""Normalisation of identity values to what HighLevel stores, and masking for logs.

Pure functions; the only state is the bounded LRU cache of ``PhoneNormaliser`` (phone parsing
costs about 10 us a call, the rest of mapping an event about as much). Every normaliser
returns None for "no usable value", which the mapping treats like an absent field.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import date
from functools import cache, lru_cache
from typing import Final

import phonenumbers

# ISO 3166-1 alpha-2, the 249 assigned codes (from tzdata's iso3166.tab).
_ISO_ALPHA2 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES: Final = frozenset(_ISO_ALPHA2.split())

# Regions phonenumbers can use as a default region for national-format numbers.
PHONE_REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)

# Deliberately loose: one @, no whitespace, a dot in the domain, no empty labels. HighLevel
# validates further; this only keeps obvious garbage from creating contacts.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_MAX_EMAIL = 254  # RFC 5321 path limit


def normalise_text(value: str) -> str | None:
    """Trimmed text; None when nothing is left."""
    text = value.strip()
    return text or None


def normalise_email(value: str) -> str | None:
    """Trimmed and lowercased; None unless it looks like ``local@domain.tld``."""
    email = value.strip().lower()
    if len(email) > _MAX_EMAIL or not _EMAIL.fullmatch(email):
        return None
    return email


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


def normalise_country(value: str) -> str | None:
    """ISO 3166-1 alpha-2, uppercased (``gb`` -> ``GB``); None for anything unrecognised
    (names, alpha-3 codes, ``UK``)."""
    code = value.strip().upper()
    return code if code in ISO_COUNTRIES else None


def parse_phone(value: str, region: str | None) -> str | None:
    """E.164 when ``value`` parses as a *possible* number (length plausible for its country;
    not necessarily assigned, so the guide's ``+44 7700 900123`` passes) using ``region`` for
    national-format numbers; None otherwise. Uncached: use ``PhoneNormaliser``."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
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
