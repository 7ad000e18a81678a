"""Normalisation tables, the phone cache, and log masking."""

from __future__ import annotations

from datetime import date

import pycountry
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.normalise import (
    ISO_COUNTRIES,
    PhoneNormaliser,
    _checked_email,
    mask_email,
    mask_phone,
    normalise_country,
    normalise_date_of_birth,
    normalise_email,
    normalise_text,
    normalise_timezone,
    parse_phone,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sam@example.com", "sam@example.com"),
        ("  Sam.Rivera+tag@Example.CO.uk \n", "sam.rivera+tag@example.co.uk"),
        ("", None),
        ("   ", None),
        ("sam", None),
        ("sam@example", None),
        ("sam@@example.com", None),
        ("sam rivera@example.com", None),
        ("@example.com", None),
        ("sam@.com", None),
        ("sam@example..com", None),
        ("a" * 250 + "@example.com", None),
        ("mailto:peter@example.com", "peter@example.com"),
        ("MAILTO:Peter@Example.com?subject=Hi", "peter@example.com"),
        ("peter\u200b@example.com", "peter@example.com"),
        ("\ufeffpeter@exam\u00adple.com", "peter@example.com"),
        ("peter..gibbons@example.com", None),
        (".peter@example.com", None),
        ("peter@bücher.de", "peter@xn--bcher-kva.de"),
        ("peter@example.test", None),  # special-use domain
        ("peter@localhost", None),
        ("mailto:", None),
    ],
)
def test_email(raw: str, expected: str | None) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GB", "GB"),
        (" us ", "US"),
        ("de", "DE"),
        ("AQ", "AQ"),
        ("UK", "GB"),
        ("u.k.", "GB"),
        ("GBR", "GB"),
        ("gbr", "GB"),
        ("826", "GB"),
        ("United States", "US"),
        ("United States of America", "US"),
        ("U.S.A.", "US"),
        ("USA", "US"),
        ("India", "IN"),
        ("  india ", "IN"),
        ("Deutschland", "DE"),
        ("Germany", "DE"),
        ("the Netherlands", "NL"),
        ("Russia", "RU"),
        ("Côte d'Ivoire", "CI"),
        ("England", "GB"),
        ("ZZ", None),
        ("XX", None),
        ("Narnia", None),
        ("U", None),
        ("", None),
    ],
)
def test_country(raw: str, expected: str | None) -> None:
    assert normalise_country(raw) == expected


def test_country_list_is_the_249_iso_codes() -> None:
    assert len(ISO_COUNTRIES) == 249
    assert all(len(code) == 2 and code.isupper() for code in ISO_COUNTRIES)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1990-09-25", "1990-09-25"),
        ("1990/09/25", "1990-09-25"),
        ("1990.09.25", "1990-09-25"),
        ("1990_09_25", "1990-09-25"),
        ("09/25/1990", "1990-09-25"),
        ("09-25-1990", "1990-09-25"),
        ("9.5.1990", "1990-09-05"),
        ("09_25_1990", "1990-09-25"),
        (" 1990-09-25T13:45:00+02:00 ", "1990-09-25"),
        ("1990-09-25 13:45:00", "1990-09-25"),
        ("1990-09/25", None),  # mixed separators
        ("25/09/1990", None),  # day first: month 25
        ("2023-02-29", None),
        ("1990-9-25T00:00:00Z", None),
        ("September 25, 1990", None),
        ("", None),
    ],
)
def test_date_of_birth(raw: str, expected: str | None) -> None:
    assert normalise_date_of_birth(raw) == expected


@given(st.dates())
def test_every_calendar_date_round_trips_in_every_listed_format(day: date) -> None:
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    for sep in "/-._":
        assert normalise_date_of_birth(sep.join((y, m, d))) == day.isoformat()
        if day.year >= 1000:
            assert normalise_date_of_birth(sep.join((m, d, y))) == day.isoformat()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Europe/London", "Europe/London"),
        (" america/chihuahua ", "America/Chihuahua"),
        ("UTC", "UTC"),
        ("Europe/Atlantis", None),
        ("+02:00", None),
        ("", None),
    ],
)
def test_timezone(raw: str, expected: str | None) -> None:
    assert normalise_timezone(raw) == expected


def test_every_country_resolves_from_its_code_alpha_3_and_names() -> None:
    for country in pycountry.countries:
        names = {
            country.alpha_2.lower(),
            country.alpha_3,
            country.name,
            getattr(country, "official_name", country.name),
            getattr(country, "common_name", country.name),
        }
        for written in names:
            assert normalise_country(written) == country.alpha_2, written


@given(
    st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9_+-]{1,10}){0,2}", fullmatch=True),
    st.sampled_from(["example.com", "Example.CO.uk", "mail.acme.io"]),
    st.sampled_from(["", "mailto:", " ", "\u200b"]),
)
def test_a_valid_address_survives_any_wrapping_and_comes_out_lowercased(
    local: str, domain: str, wrapper: str
) -> None:
    assert normalise_email(f"{wrapper}{local}@{domain}{wrapper.strip(':mailto')}") == (
        f"{local}@{domain}".lower()
    )


@settings(max_examples=500)
@given(
    st.from_regex(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,70}@[A-Za-z0-9.-]{1,20}\.(com|io|test|local|c0m|x)",
        fullmatch=True,
    )
)
def test_the_fast_path_agrees_with_the_full_check(address: str) -> None:
    # plain-looking addresses take the fast path; it must answer what the full check answers
    assert normalise_email(address) == _checked_email(address)


def test_text() -> None:
    assert normalise_text("  Sam  ") == "Sam"
    assert normalise_text(" \t ") is None


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 7700 900123", None, "+447700900123"),  # reserved drama range: possible, not valid
        ("+1 415 555 0142", None, "+14155550142"),
        ("+1-415-555-0142", "GB", "+14155550142"),  # an explicit prefix beats the region
        ("07700 900123", "GB", "+447700900123"),
        ("(415) 555-0142", "US", "+14155550142"),
        ("030 1234567", "DE", "+49301234567"),
        ("415 555 0142", None, None),
        ("0142", "US", None),
        ("555-0142", "US", None),  # local-only: possible to dial locally, not a full number
        ("+91 2111111 ", "US", None),  # too short for India
        ("tel:+1-415-555-0142", None, "+14155550142"),
        ("TEL:+14155550142;ext=2", None, "+14155550142"),
        ("9876543212", "IN", "+919876543212"),
        ("+1 415 555 0142 999 999 999", None, None),
        ("not a number", "US", None),
        ("", "US", None),
    ],
)
def test_phone(raw: str, region: str | None, expected: str | None) -> None:
    assert parse_phone(raw, region) == expected
    assert PhoneNormaliser(4)(raw, region) == expected


def test_phone_cache_is_bounded_and_keyed_by_region() -> None:
    phones = PhoneNormaliser(cache_size=2)
    assert phones("07700 900123", "GB") == "+447700900123"
    assert phones("07700 900123", "GB") == "+447700900123"
    assert phones.cache_info() == (1, 1, 1)
    assert phones("07700 900123", "US") is None
    phones("(415) 555-0142", "US")
    assert phones.cache_info()[2] == 2


def test_masking() -> None:
    assert mask_email("sam@example.com") == "s***@example.com"
    assert mask_email("not-an-email") == "***"
    assert mask_phone("+14155550142") == "+1******0142"
    assert mask_phone("+447700900123") == "+4*******0123"
    assert mask_phone("12345") == "*****"
