"""Fidelity of the mapping on real-world events (issue 14): what other projects' events become.

    .venv/bin/python bench/bench_fidelity.py [--corpus DIR] [--out FILE] [--check]

Every line of every ``*.jsonl`` in ``--corpus`` (default ``../shared/corpus/realworld`` beside
the repository; third-party data: read here, never copied into the repository; its README says
where each event comes from) is mapped by a fresh mapper, so that fixtures reusing message and
user ids do not interfere. The mapper is built as deployed, ``build_mapper(settings.targets(),
settings.mapping.options())`` from the settings of ``GHL_LOCATION_ID`` alone, in two runs: no
default phone region, and ``GHL_DEFAULT_PHONE_REGION=US``. Per run:

- actions: every outcome counted as ``upsert``, ``drop: <reason>`` or ``reject: <reason>``, per
  file and in total; ``crash`` when mapping raised (it never may; listed as file:line).
- schema failures: upsert payloads that break HighLevel's strict upsert schema, checked by the
  unit tests' validator (``tests/unit/upsert_schema.py``); listed as file:line, path: keyword.
- fields recovered: for every payload key but ``locationId``, how many upserts carry it (new
  fields are counted as soon as the mapper sends them).
- fields omitted: the ``(field, reason)`` items of an outcome's ``omitted`` attribute, when the
  outcomes have one (``omitted_reported`` says whether any had).
- wrong-country phones and identity misses, defined below; each one listed.

*Stated country*: a string under a ``country`` or ``countryCode`` key (any case; ``_`` and ``-``
ignored) in ``traits``, ``context.traits`` and, for track events, ``properties``, or in their
``address`` objects. It *resolves* to ISO 3166-1 alpha-2 through pycountry (alpha-2, alpha-3,
numeric, English names) and ``ALIASES``: deliberately not the mapper's own table, so that the
yardstick is not the thing measured.

*Phone-looking value*: a string or integer (or a list of them) under a key containing
``phone``, ``mobile`` or ``msisdn``, or named ``tel`` or ``cell``, at any depth of ``traits``,
``context.traits`` and ``properties``. An upsert phone P (E.164) is *written by the sender* when
one of them, parsed with no region, gives P (it carried its own ``+`` country code); otherwise
the mapper chose P's country, and P is a *wrong-country phone* when

1. ``calling_code``: the event states a country that resolves, and P's country calling code is
   the calling code of none of the stated countries that resolve (``India`` and ``+1...``); or
2. ``default_region``: the run has a default region R, the event states a country and none of
   them resolves to R, and the same event mapped with no default region does not upsert P: P
   exists only because R was applied to a national-format number although the event names
   another (or an unknown) country.

An explicit ``+91 ...`` beside ``country: US`` is the sender's own and is not counted.

*Identity miss*: an identity event (type ``identify`` in any case, or a track event named like
a preset event: ``Identified``, ``Signed Up``, ``Lead Generated``) that carries a usable email
or phone but does not upsert in that run. Usable email: a string at any depth of ``traits``,
``context.traits`` or ``properties`` that is a plain ASCII ``local@domain.tld`` once trimmed of
``mailto:`` and invisible characters. Usable phone: a phone-looking value phonenumbers reads as
``IS_POSSIBLE`` (not local-only, not too short) with the region of the first stated country that
resolves, else the run's default region. Listed with the outcome's reason and the paths where
the values were found, never the values, and in one of three classes:

- ``envelope``: rejected as ``invalid_event`` (no user id), which the issue keeps a reject;
- ``elsewhere``: every usable value sits where no trait table looks: nested deeper than a
  container's ``address`` (``properties.details.body.email``, ``context.traits.emails[0]``), an
  email under a key that does not name the contact's own email (``traits.user_name``,
  ``traits.refiner_email``), or ``properties`` of an
  event other than track (the Segment spec puts an identify's identity in traits);
- ``to_fix``: the others, which the mapping should upsert. The bar counts these.

The bar (issue 14), ``met`` in the results: in every run 0 crashes, 0 schema failures, 0
wrong-country phones and 0 identity misses ``to_fix``.

Output: the tables on stdout (the same ones ``bench/report.py`` writes into BENCHMARKS.md),
``bench/results/fidelity.json``. Exit status: 1 with ``--check`` when the bar is not met; 2 when
the corpus is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import phonenumbers
import pycountry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, loadavg, machine_facts, write_result
from bench.report import fidelity_section
from consumer.config import load_settings
from consumer.core.events import ContactUpsert, Drop, Outcome, PresetEvent, Reject
from consumer.core.mapping import build_mapper
from consumer.core.normalise import mask_phone
from tests.unit.upsert_schema import payload_errors

CORPUS: Final = ROOT.parent / "shared" / "corpus" / "realworld"
COMMAND: Final = ".venv/bin/python bench/bench_fidelity.py"
REGIONS: Final = (None, "US")
LOCATION: Final = "ve9EPM428h8vShlRW1KT"
TOPIC: Final = "events"
# Names pycountry does not know, as people write them.
ALIASES: Final = {
    "UK": "GB",
    "U.K.": "GB",
    "GREAT BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERN IRELAND": "GB",
    "U.S.": "US",
    "U.S.A.": "US",
    "AMERICA": "US",
    "DEUTSCHLAND": "DE",
    "RUSSIA": "RU",
    "SOUTH KOREA": "KR",
    "VIETNAM": "VN",
}
_INVISIBLE: Final = re.compile("[\u00ad\u200b-\u200f\u2060\ufeff]")
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL: Final = re.compile(
    rf"{_ATOM}(?:\.{_ATOM})*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{{2,}}"
)
_PHONE_KEYS: Final = ("phone", "mobile", "msisdn")
_PHONE_NAMES: Final = frozenset(("tel", "cell", "cellnumber"))
_COUNTRY_KEYS: Final = frozenset(("country", "countrycode"))
_PRESETS: Final = frozenset(p.value for p in PresetEvent)
# What the issue keeps rejecting whatever the traits hold (identity events have a type).
_ENVELOPE: Final = frozenset(("reject: invalid_event",))

MapLine = Callable[[bytes], Sequence[Outcome]]
"""Maps one corpus line (a record value) to its outcomes with a fresh mapper."""


@dataclass(frozen=True, slots=True)
class Line:
    """One corpus event: its file's stem, 1-based line number and bytes."""

    source: str
    number: int
    value: bytes

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


def read_corpus(directory: Path) -> tuple[list[Line], dict[str, dict[str, Any]]]:
    """Every line of every ``*.jsonl`` but the ``*.provenance.jsonl`` files, and per file its
    event count and SHA-256 (which corpus the figures are of). Raises FileNotFoundError."""
    files = sorted(
        p for p in directory.glob("*.jsonl") if not p.name.endswith(".provenance.jsonl")
    )
    if not files:
        raise FileNotFoundError(f"no *.jsonl corpus files in {directory}")
    lines: list[Line] = []
    described: dict[str, dict[str, Any]] = {}
    for path in files:
        data = path.read_bytes()
        rows = [row for row in data.split(b"\n") if row.strip()]
        lines += [Line(path.stem, number, row) for number, row in enumerate(rows, 1)]
        described[path.stem] = {
            "events": len(rows),
            "sha256": hashlib.sha256(data).hexdigest()[:16],
        }
    return lines, described


def fresh_mapper_per_event(region: str | None) -> MapLine:
    """``MapLine`` with the deployed defaults and ``region`` as the default phone region."""
    environ = {"GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": "unused"}
    if region is not None:
        environ["GHL_DEFAULT_PHONE_REGION"] = region
    settings = load_settings(None, environ, read_secrets=False)
    targets, options = settings.targets(), settings.mapping.options()

    def map_line(value: bytes) -> list[Outcome]:
        mapper = build_mapper(targets, options)
        return mapper.map_record(value=value, key=None, topic=TOPIC, now=0.0)

    return map_line


# -- what the event itself says ------------------------------------------------------------------


def resolve_country(text: str) -> str | None:
    """ISO 3166-1 alpha-2 of a stated country, or None (see the module docstring)."""
    name = text.strip()
    alias = ALIASES.get(name.upper())
    if alias is not None:
        return alias
    try:
        code: str = pycountry.countries.lookup(name).alpha_2
    except LookupError:
        return None
    return code


_OWN_EMAIL_KEYS = frozenset({"email", "emailaddress", "mail"})
"""Keys that name the contact's own email. A prefixed key (``refiner_email``, ``billing_email``)
names another tool's or purpose's address: a miss there is ``elsewhere``."""


def _squash(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _is_phone_key(key: str) -> bool:
    squashed = _squash(key)
    return squashed in _PHONE_NAMES or any(word in squashed for word in _PHONE_KEYS)


def _walk(node: object, path: str, key: str) -> Iterator[tuple[str, str, object]]:
    """(path, key, value) of every value under ``node``; list items carry their list's key."""
    if isinstance(node, dict):
        for child_key, value in node.items():
            child = f"{path}.{child_key}"
            yield child, str(child_key), value
            yield from _walk(value, child, str(child_key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            item = f"{path}[{index}]"
            yield item, key, value
            yield from _walk(value, item, key)


def _clean_email(text: str) -> str:
    cleaned = _INVISIBLE.sub("", text).strip()
    return cleaned[7:] if cleaned[:7].lower() == "mailto:" else cleaned


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _possible(text: str, region: str | None) -> bool:
    number = _parse(text, region)
    return (
        number is not None
        and phonenumbers.is_possible_number_with_reason(number)
        == phonenumbers.ValidationResult.IS_POSSIBLE
    )


def _calling_code(e164: str) -> int | None:
    number = _parse(e164, None)
    return None if number is None else number.country_code


@dataclass(frozen=True, slots=True)
class Facts:
    """What one event says, read independently of the mapper (see the module docstring)."""

    identity: str | None  # the identity event's label, None for any other event
    countries: tuple[str, ...]  # stated, as written
    resolved: tuple[str, ...]  # ISO-2 of the stated countries that resolve, in order
    phones: tuple[tuple[str, str], ...]  # (path, text) of phone-looking values
    emails: tuple[str, ...]  # paths of usable emails
    explicit: frozenset[str]  # E.164 of the phone-looking values that parse with no region
    named: frozenset[str]  # paths of the values a trait table can name (``to_fix`` misses)

    @classmethod
    def of(cls, value: bytes) -> Facts:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            return cls(None, (), (), (), (), frozenset(), frozenset())
        kind = event.get("type")
        kind = kind.lower() if isinstance(kind, str) else None
        name = event.get("event")
        identity = None
        if kind == "identify":
            identity = "identify"
        elif kind == "track" and isinstance(name, str) and name in _PRESETS:
            identity = str(name)
        context = event.get("context")
        containers = [
            ("traits", event.get("traits")),
            ("context.traits", context.get("traits") if isinstance(context, dict) else None),
            ("properties", event.get("properties")),
        ]
        countries: list[str] = []
        phones: list[tuple[str, str]] = []
        emails: list[str] = []
        named: set[str] = set()
        for prefix, container in containers:
            if not isinstance(container, dict):
                continue
            if prefix != "properties" or kind == "track":
                address = container.get("address")
                for holder in (container, address if isinstance(address, dict) else {}):
                    countries += [
                        v for k, v in holder.items()
                        if _squash(str(k)) in _COUNTRY_KEYS and isinstance(v, str) and v.strip()
                    ]
            for path, key, item in _walk(container, prefix, prefix):
                if isinstance(item, bool) or not isinstance(item, str | int):
                    continue
                text = str(item)
                shallow = path in (f"{prefix}.{key}", f"{prefix}.address.{key}") and (
                    prefix != "properties" or kind == "track"
                )
                if _is_phone_key(key):
                    phones.append((path, text))
                    if shallow:
                        named.add(path)
                elif isinstance(item, str) and _EMAIL.fullmatch(_clean_email(text)):
                    emails.append(path)
                    if shallow and _squash(key) in _OWN_EMAIL_KEYS:
                        named.add(path)
        resolved = tuple(code for code in map(resolve_country, countries) if code is not None)
        explicit = set()
        for _, text in phones:
            number = _parse(text, None)
            if number is not None:
                explicit.add(
                    phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                )
        return cls(
            identity,
            tuple(countries),
            resolved,
            tuple(phones),
            tuple(emails),
            frozenset(explicit),
            frozenset(named),
        )

    def usable_phones(self, default_region: str | None) -> list[str]:
        """Paths of the phone-looking values that are possible numbers (docstring)."""
        region = next((c for c in self.resolved if c in phonenumbers.SUPPORTED_REGIONS), None)
        region = region or default_region
        return [path for path, text in self.phones if _possible(text, region)]

    def wrong_country(self, phone: str, region: str | None, unguided: set[str] | None) -> str:
        """``calling_code``, ``default_region`` or "" for an upsert phone (docstring).
        ``unguided``: the phones the same event upserts with no default region (None when
        that run was not made)."""
        if phone in self.explicit:
            return ""
        stated = {phonenumbers.country_code_for_region(c) for c in self.resolved} - {0}
        if stated and _calling_code(phone) not in stated:
            return "calling_code"
        if (
            region is not None
            and self.countries
            and region not in self.resolved
            and unguided is not None
            and phone not in unguided
        ):
            return "default_region"
        return ""


# -- one run -------------------------------------------------------------------------------------


def omissions(outcome: object) -> list[tuple[str, str]]:
    """(field, reason) of what ``outcome`` left out: its ``omitted`` items, each a pair or an
    object with ``field`` and ``reason``; empty when it has no such attribute."""
    found: list[tuple[str, str]] = []
    for item in getattr(outcome, "omitted", ()):
        if hasattr(item, "field"):
            found.append((str(item.field), str(getattr(item, "reason", "?"))))
        else:
            field, reason = item
            found.append((str(field), str(reason)))
    return found


def action(outcome: Outcome) -> str:
    """``upsert``, ``drop: <reason>`` or ``reject: <reason>``."""
    if isinstance(outcome, ContactUpsert):
        return "upsert"
    kind = "drop" if isinstance(outcome, Drop) else "reject"
    return f"{kind}: {outcome.reason.value}"


class Run:
    """The figures of one run (one default region) as events are added."""

    def __init__(self, region: str | None) -> None:
        self.region = region
        self.by_file: dict[str, Counter[str]] = {}
        self.fields: Counter[str] = Counter()
        self.omitted: Counter[tuple[str, str]] = Counter()
        self.omitted_reported = False
        self.crashes: list[dict[str, Any]] = []
        self.schema_failures: list[dict[str, Any]] = []
        self.wrong_country: list[dict[str, Any]] = []
        self.identity: Counter[str] = Counter()
        self.misses: list[dict[str, Any]] = []

    def crash(self, line: Line, error: Exception) -> None:
        self.by_file.setdefault(line.source, Counter())["crash"] += 1
        message = f"{type(error).__name__}: {error}"
        self.crashes.append({"event": line.where, "error": message[:300]})

    def add(
        self,
        line: Line,
        facts: Facts,
        outcomes: Sequence[Outcome] | None,
        unguided: set[str] | None,
    ) -> None:
        """Count ``outcomes`` of ``line`` (None: mapping crashed, already counted)."""
        counts = self.by_file.setdefault(line.source, Counter())
        upserted = False
        for outcome in outcomes or ():
            counts[action(outcome)] += 1
            if hasattr(outcome, "omitted"):
                self.omitted_reported = True
                self.omitted.update(omissions(outcome))
            if not isinstance(outcome, ContactUpsert):
                continue
            upserted = True
            payload = outcome.payload()
            self.fields.update(key for key in payload if key != "locationId")
            errors = payload_errors(payload)
            if errors:
                self.schema_failures.append({"event": line.where, "errors": errors})
            phone = payload.get("phone")
            if isinstance(phone, str):
                kind = facts.wrong_country(phone, self.region, unguided)
                if kind:
                    self.wrong_country.append({
                        "event": line.where,
                        "phone": mask_phone(phone),
                        "stated_country": ", ".join(facts.countries),
                        "kind": kind,
                    })
        if facts.identity is None:
            return
        self.identity["events"] += 1
        found = [*facts.emails, *facts.usable_phones(self.region)]
        if not found:
            return
        self.identity["with_usable_email_or_phone"] += 1
        if upserted:
            self.identity["upserted"] += 1
            return
        first = outcomes[0] if outcomes else None
        reason = "crash" if first is None else action(first)
        if reason in _ENVELOPE:
            kind = "envelope"
        elif facts.named.isdisjoint(found):
            kind = "elsewhere"
        else:
            kind = "to_fix"
        self.misses.append({
            "event": line.where,
            "name": facts.identity,
            "reason": reason,
            "class": kind,
            "error": first.error if isinstance(first, Reject) else "",
            "found": found,
        })

    def doc(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for counts in self.by_file.values():
            total.update(counts)
        upserts = total["upsert"]
        omitted: dict[str, dict[str, int]] = {}
        for (field, reason), count in sorted(self.omitted.items()):
            omitted.setdefault(field, {})[reason] = count
        return {
            "default_phone_region": self.region,
            "totals": {
                "events": sum(sum(c.values()) for c in self.by_file.values()),
                "upserts": upserts,
                "drops": sum(n for k, n in total.items() if k.startswith("drop")),
                "rejects": sum(n for k, n in total.items() if k.startswith("reject")),
                "crashes": len(self.crashes),
                "schema_failures": len(self.schema_failures),
                "wrong_country_phones": len(self.wrong_country),
                "identity_misses": len(self.misses),
                "identity_misses_to_fix": sum(m["class"] == "to_fix" for m in self.misses),
            },
            "actions": {
                "total": dict(total.most_common()),
                "by_file": {f: dict(c.most_common()) for f, c in sorted(self.by_file.items())},
            },
            "fields": dict(self.fields.most_common()),
            "omitted_reported": self.omitted_reported,
            "omitted": omitted,
            "crashes": self.crashes,
            "schema_failures": self.schema_failures,
            "wrong_country_phones": self.wrong_country,
            "identity": {
                **{k: self.identity[k] for k in
                   ("events", "with_usable_email_or_phone", "upserted")},
                "missed": len(self.misses),
                **{f"missed_{kind}": sum(m["class"] == kind for m in self.misses)
                   for kind in ("envelope", "elsewhere", "to_fix")},
                "missed_by_reason": dict(Counter(m["reason"] for m in self.misses).most_common()),
                "misses": self.misses,
            },
        }


def run_label(region: str | None) -> str:
    return region or "none"


def measure(lines: Iterable[Line], mappers: Mapping[str | None, MapLine]) -> dict[str, Any]:
    """The runs' figures, keyed by ``run_label``: every line through every mapper of
    ``mappers`` (default region -> ``MapLine``). The ``default_region`` kind of wrong-country
    phone needs a run with no default region (the key None)."""
    runs = {region: Run(region) for region in mappers}
    for line in lines:
        facts = Facts.of(line.value)
        results: dict[str | None, Sequence[Outcome] | None] = {}
        for region, map_line in mappers.items():
            try:
                results[region] = map_line(line.value)
            except Exception as error:  # noqa: BLE001 - a crash is a finding: counted, listed
                runs[region].crash(line, error)
                results[region] = None
        unguided = None
        if None in results:
            unguided = {
                str(o.fields["phone"]) for o in results[None] or ()
                if isinstance(o, ContactUpsert) and "phone" in o.fields
            }
        for region, outcomes in results.items():
            runs[region].add(line, facts, outcomes, unguided)
    return {run_label(region): run.doc() for region, run in runs.items()}


def met(runs: Mapping[str, Mapping[str, Any]]) -> bool:
    """The issue's bar: no crash, schema failure, wrong-country phone or identity miss
    ``to_fix``."""
    zero = ("crashes", "schema_failures", "wrong_country_phones", "identity_misses_to_fix")
    return all(run["totals"][key] == 0 for run in runs.values() for key in zero)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="directory (%(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the bar is met")
    args = parser.parse_args()
    try:
        lines, files = read_corpus(args.corpus)
    except OSError as error:
        print(f"bench_fidelity: {error}; pass --corpus DIR", file=sys.stderr)
        return 2
    load_start = loadavg()
    started = time.monotonic()
    runs = measure(lines, {region: fresh_mapper_per_event(region) for region in REGIONS})
    doc = {
        "benchmark": "mapping fidelity on real-world events",
        "command": COMMAND + ("" if args.corpus == CORPUS else f" --corpus {args.corpus}"),
        "corpus": {"directory": str(args.corpus), "files": files},
        "events": len(lines),
        "runs": runs,
        "met": met(runs),
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": machine_facts(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_result(args.out, doc)
    print("\n".join(fidelity_section(doc)))
    print(f"results: {args.out}")
    return 1 if args.check and not doc["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
