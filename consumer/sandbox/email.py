"""Email validation as HighLevel applies it: validator.js ``isEmail`` with its default options.

HighLevel's API is NestJS; its ``email must be an email`` answers are class-validator's
``IsEmail``, which calls validator.js ``isEmail(value, {})`` (docs/highlevel.md, "Known
pitfalls": *reported*, an inference from the message). Ported from
https://github.com/validatorjs/validator.js/blob/master/src/lib/isEmail.js and ``isFQDN.js``
(read at commit cdb7daf, 2026-08-08), defaults only: no display name, no IP domains, no
underscores, a TLD required, UTF-8 local parts allowed, length limits enforced.

The rules, in the order ``is_email`` applies them:

1. The whole address is at most 254 UTF-16 code units (JavaScript's ``str.length``).
2. It splits at the **last** ``@``: the domain after it, the local part before it (so the local
   part may hold an ``@`` only inside quotes, rule 7).
3. The local part is at most 64 bytes and the domain at most 254 bytes, both in UTF-8.
4. The domain is a fully qualified domain name (``isFQDN`` defaults):
   - at least two labels separated by dots; no empty label (``x..co``), no leading or trailing
     dot;
   - the TLD (last label) is two or more letters: ASCII letters or characters U+00A1-U+00A8,
     U+00AA-U+D7FF, U+F900-U+FDCF, U+FDF0-U+FFEF (IDN TLDs such as ``.рф``), or a punycode
     label ``xn--...``; no digits-only TLD, no whitespace in it;
   - every label is at most 63 UTF-16 code units of ASCII letters, digits, ``-`` and characters
     from U+00A1 up (IDN domains such as ``exämple.de`` are accepted as typed); no full-width
     ASCII (U+FF01-U+FF5E), no label starting or ending with ``-``, no ``_``.
5. A local part wrapped in double quotes is checked as a quoted string (rule 7); otherwise it is
   split at every ``.`` and each part must be non-empty (so no leading or trailing dot and no
   ``..``) and made of ASCII letters, digits, ``!#$%&'*+-/=?^_`{|}~`` and the UTF-8 characters
   U+00A1-U+D7FF, U+F900-U+FDCF, U+FDF0-U+FFEF (``jöhn`` is accepted).
6. Characters beyond U+FFFF are refused in the local part and the TLD, and accepted in other
   domain labels (JavaScript sees them as two surrogates, which only the label range covers).
7. A quoted local part (``"john doe"@x.co``) may hold whitespace, printable ASCII except ``"``
   and ``\\``, control characters except NUL, CR and LF, the UTF-8 ranges above plus U+00A0, and
   backslash escapes of those.

``is_email`` is pure and total: it answers False for anything that is not a ``str``.
"""

from __future__ import annotations

import re
from typing import Any

_MAX_ADDRESS_UNITS = 254
_MAX_LOCAL_BYTES = 64
_MAX_DOMAIN_BYTES = 254
_MAX_LABEL_UNITS = 63

# JavaScript's \s (the characters ECMAScript calls WhiteSpace and LineTerminator).
_JS_SPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_UTF8 = r"\u00a1-\ud7ff\uf900-\ufdcf\ufdf0-\uffef"

_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~" + _UTF8 + "]+")
_QUOTED_TEXT = r"\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x21\x23-\x5b\x5d-\x7e\u00a0"
_QUOTED_LOCAL_PART = re.compile(
    "(?:[" + _JS_SPACE + _QUOTED_TEXT + _UTF8 + "]"
    r"|\\[\x01-\x09\x0b\x0c\x0d-\x7f\u00a0" + _UTF8 + "])*"
)
_TLD = re.compile(
    r"[A-Za-z\u00a1-\u00a8\u00aa-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]{2,}|(?i:xn)[A-Za-z0-9-]{2,}"
)
_JS_SPACE_SEARCH = re.compile("[" + _JS_SPACE + "]")
# \U00010000-\U0010ffff: a JavaScript string holds these as surrogates, inside \u00a1-\uffff.
_LABEL = re.compile(r"[A-Za-z0-9\u00a1-\uffff\U00010000-\U0010ffff-]+")
_FULL_WIDTH = re.compile(r"[\uff01-\uff5e]")


def is_email(value: Any) -> bool:
    """Whether validator.js ``isEmail(value)`` with default options answers true (rules above)."""
    if not isinstance(value, str) or _utf16_units(value) > _MAX_ADDRESS_UNITS:
        return False
    local, at, domain = value.rpartition("@")
    if not at:
        return False
    if _utf8_bytes(local) > _MAX_LOCAL_BYTES or _utf8_bytes(domain) > _MAX_DOMAIN_BYTES:
        return False
    if not is_fqdn(domain):
        return False
    if len(local) >= 1 and local[0] == '"' and local[-1] == '"':
        return _QUOTED_LOCAL_PART.fullmatch(local[1:-1]) is not None
    return all(_LOCAL_PART.fullmatch(part) for part in local.split("."))


def is_fqdn(domain: str) -> bool:
    """validator.js ``isFQDN(domain)`` with its defaults (rule 4 above)."""
    labels = domain.split(".")
    tld = labels[-1]
    if len(labels) < 2 or _TLD.fullmatch(tld) is None or _JS_SPACE_SEARCH.search(tld):
        return False
    return all(
        _utf16_units(label) <= _MAX_LABEL_UNITS
        and _LABEL.fullmatch(label) is not None
        and _FULL_WIDTH.search(label) is None
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )


def _utf16_units(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
