"""The sandbox's email check: validator.js ``isEmail`` defaults, HighLevel's (class-validator's)
``email must be an email``. Expected answers are validator.js's own (checked against its source,
src/lib/isEmail.js and isFQDN.js, with node)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.sandbox.email import is_email
from consumer.sandbox.schema import Unprocessable, validate_upsert

ACCEPTED = [
    "sam@example.com",
    "jöhn@exämple.de",  # UTF-8 local part, IDN domain as typed
    "a" * 64 + "@x.co",  # 64 bytes: the limit
    "ö" * 32 + "@x.co",  # 32 characters, 64 bytes
    "o'brien+tag@mail.example.co.uk",
    "x@пример.рф",  # IDN TLD
    "x@a.xn--p1ai",  # punycode TLD
    "x@a.XN--P1AI",
    '"john doe"@x.co',  # quoted local part
    '"a@b"@x.co',  # the domain is after the last @
    "x@" + "a" * 63 + ".co",  # 63-character label
    "x@a-b.co",
    "a" * 64 + "@" + ("b" * 61 + ".") * 3 + "com",  # 254 characters in all: the limit
]

REFUSED = [
    "a..b@x.co",  # empty dot-part
    ".a@x.co",  # leading dot
    "a.@x.co",  # trailing dot
    "a" * 70 + "@x.co",  # 70-character local part
    "ö" * 33 + "@x.co",  # 33 characters but 66 bytes
    "x@" + "a" * 64 + ".co",  # label over 63
    "a" * 64 + "@" + ("b" * 61 + ".") * 3 + "comx",  # 255 characters in all
    "x@a..co",
    "x@.a.co",
    "x@a.co.",
    "x@-a.co",
    "x@a-.co",
    "x@a_b.co",
    "x@a.c",  # one-letter TLD
    "x@a.b1",  # TLD with a digit
    "x@a.123",
    "x@localhost",  # no TLD
    "x@[127.0.0.1]",  # IP domains are off by default
    "x@１２３.co",  # full-width digits
    "😀@x.co",  # outside the BMP in the local part
    "a b@x.co",
    "sam",
    "@x.co",
    "sam@",
]


@pytest.mark.parametrize("email", ACCEPTED)
def test_validator_js_accepts(email: str) -> None:
    assert is_email(email)
    assert validate_upsert({"locationId": "L", "email": email})["email"] == email


@pytest.mark.parametrize("email", REFUSED)
def test_validator_js_refuses(email: str) -> None:
    assert not is_email(email)
    with pytest.raises(Unprocessable) as caught:
        validate_upsert({"locationId": "L", "email": email})
    assert caught.value.messages == ["email must be an email"]


@pytest.mark.parametrize("value", [None, 7, ["a@b.co"], b"a@b.co"])
def test_only_strings_can_be_emails(value: Any) -> None:
    assert not is_email(value)
