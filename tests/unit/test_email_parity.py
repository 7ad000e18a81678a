"""The consumer never sends an email HighLevel would refuse: whatever ``normalise_email``
keeps passes the sandbox's port of validator.js ``isEmail`` (HighLevel's check, see
docs/highlevel.md "Known pitfalls"). The consumer may be stricter (special-use domains, quoted
local parts), never looser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.normalise import normalise_email
from consumer.sandbox.email import is_email

LOCALS = [
    "a", "sam", "jöhn", "x.y", ".a", "a.", "a..b", "a+b", "a_b", "a-b", '"q"', "a b", "ü",
    "A", "a'b", "a!b", "%", "{x}", "é", "1", "a" * 64, "a" * 65, "é" * 32, "é" * 33, "日本",
    "😀", "a\u00a0b", "tab\tx",
]  # fmt: skip
DOMAINS = [
    "x.co", "example.com", "exämple.de", "a-b.com", "-a.com", "a-.com", "a_b.com", "x.c",
    "x.c0", "x.123", "localhost", "x.xn--p1ai", "1.2.3.4", "[1.2.3.4]", "x..com", "x.com.",
    "X.COM", "a" * 64 + ".com", "a" * 63 + ".com", "x.museum", "sub.x.io", "例え.jp", "x.co_",
    "ｘ.com", "x.😀", "x.xn--", "x.xn--a",
]  # fmt: skip
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(
    st.one_of(
        st.tuples(st.sampled_from(LOCALS), st.sampled_from(DOMAINS)).map("@".join),
        st.tuples(st.sampled_from(LOCALS) | TEXT, st.sampled_from(DOMAINS) | TEXT).map(
            "@".join
        ),
    )
)
@settings(max_examples=500, deadline=None)
def test_what_the_consumer_sends_highlevel_accepts(address: str) -> None:
    sent = normalise_email(address)
    assert sent is None or is_email(sent), (address, sent)


def test_the_cases_where_email_validator_alone_is_looser_than_highlevel() -> None:
    assert normalise_email("a" * 65 + "@example.com") is None  # 65 bytes before the @
    assert normalise_email("é" * 33 + "@example.com") is None  # 66 UTF-8 bytes
    assert normalise_email("sam@x.c") is None  # a one-letter top-level domain
    assert normalise_email("a" * 64 + "@example.com") == "a" * 64 + "@example.com"
    assert normalise_email("jöhn@exämple.de") == "jöhn@xn--exmple-cua.de"
