"""``ghl-consumer trace``: one person's events end to end (README, "Tracing one person").

Given ``--user-id`` or ``--anonymous-id`` (a record key), ``--email`` (the keys of the profiles
holding it, from the profile changelog) or ``--message-id``, and optionally ``--since`` /
``--until``, it

1. reads the source partitions the person's keys hash to (``--partitioner``: ``crc32``,
   librdkafka's default; ``murmur2``, the Java client's; ``both``, the default: at most two
   partitions per topic and key; ``all``: every partition, for keyless or custom-partitioned
   producers; ``--message-id`` always reads every partition), keeping the records keyed by
   one of the keys or whose ``userId`` / ``anonymousId`` is one;
2. re-runs the Mapper on them, oldest first (what ``run`` decided and why);
3. reads the consumer group's committed offsets and offset maps (committed or not), and the
   partitions of the delivery, dead-letter and parking topics the person's keys hash to
   (written by this consumer's librdkafka producer: CRC-32, or murmur2 when
   ``kafka.librdkafka.partitioner`` says so): which HighLevel call carried each record, with
   which others it was coalesced, why it was dead-lettered, where it was parked and whether
   the parking group replayed it;
4. with ``--highlevel``, asks each integration's location for the contact with the email the
   last upsert sent, or its phone when it sent no email (``GET /contacts/search/duplicate``,
   ``email`` or ``number``), and names the fields that differ from it.

It prints one line per record (``--json``: one JSON document, see
``consumer.commands.trace_journey``), personal data masked (emails and phones partly, other
values as ``hidden:<hash>``) unless ``--show-personal-data``. Read-only: it never produces,
never commits and never joins a group (partitions are assigned; committed offsets are read as
an outsider). The Kafka settings, security included, are ``run``'s (``--config`` and the
environment).

Exit status: 0 records found; 1 none found, or Kafka failed; 2 a configuration error or bad
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import orjson

from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    add_log_level_argument,
    configure_logging,
    load,
    profile_cipher,
    run_command,
)
from consumer.commands.trace_journey import (
    Findings,
    journey,
    oldest_first,
    remap,
    text_line,
)
from consumer.config import Settings
from consumer.core.events import ContactUpsert, Outcome, Record
from consumer.core.mapping import build_mapper
from consumer.core.normalise import mask_email, normalise_email
from consumer.engine.deliveries import DeliveryRecord, contact_digest
from consumer.engine.parking import parking_key
from consumer.errors import ConfigError, KafkaAdapterError
from consumer.highlevel.client import HighLevelClient
from consumer.highlevel.verdicts import ignored_fields
from consumer.kafka.clients import Setting
from consumer.kafka.partitioner import PARTITIONERS, Partitioner, partition_for
from consumer.kafka.reader import TopicReader
from consumer.observe.recent_deliveries import Hider, mask_payload
from consumer.state.changelog import read_person

PARTITIONER_CHOICES = ("crc32", "murmur2", "both", "all")


@dataclass(frozen=True, slots=True)
class Query:
    """What to trace: ``kind`` is ``user-id``, ``anonymous-id``, ``email`` (normalised) or
    ``message-id``; the window in ms since the epoch (None: unbounded)."""

    kind: str
    value: str
    since_ms: int | None = None
    until_ms: int | None = None
    partitioner: str = "both"


def _moment(text: str, option: str) -> int:
    """ISO 8601 (``2026-12-06``, ``2026-12-06T18:00Z``; UTC unless an offset is given) -> ms."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: not an ISO 8601 date or time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def query(args: argparse.Namespace) -> Query:
    """The query named on the command line. Raises ConfigError for bad values."""
    since = None if args.since is None else _moment(args.since, "--since")
    until = None if args.until is None else _moment(args.until, "--until")
    if since is not None and until is not None and until < since:
        raise ConfigError("--until: before --since")
    if args.email is not None:
        email = normalise_email(args.email)
        if email is None:
            raise ConfigError("--email: not a valid email address")
        kind, value = "email", email
    elif args.user_id is not None:
        kind, value = "user-id", args.user_id
    elif args.anonymous_id is not None:
        kind, value = "anonymous-id", args.anonymous_id
    else:
        kind, value = "message-id", args.message_id
    if not value:
        raise ConfigError(f"--{kind}: must not be empty")
    return Query(kind, value, since, until, args.partitioner)


def partitions_of(
    keys: Collection[str], counts: Mapping[str, int], partitioners: Sequence[Partitioner] | None
) -> set[tuple[str, int]]:
    """The (topic, partition) pairs records keyed by ``keys`` may be in; every partition when
    ``partitioners`` is None. A topic of no partitions (absent) has none."""
    found: set[tuple[str, int]] = set()
    for topic, count in counts.items():
        if count <= 0:
            continue
        if partitioners is None:
            found.update((topic, p) for p in range(count))
            continue
        for key in keys:
            for partitioner in partitioners:
                found.add((topic, partition_for(key.encode(), count, partitioner)))
    return found


def own_partitioners(extra: Mapping[str, Setting]) -> tuple[Partitioner, ...] | None:
    """The partitioner this consumer's producer uses for its own topics: librdkafka's
    ``partitioner`` setting (default ``consistent_random``: CRC-32); None (read every
    partition) for a random one."""
    setting = str(extra.get("partitioner", "consistent_random"))
    if setting.startswith("consistent"):
        return ("crc32",)
    if setting.startswith("murmur2"):
        return ("murmur2",)
    return None


async def _read(
    bootstrap: str,
    extra: Mapping[str, Setting],
    topic: str,
    only: Collection[tuple[str, int]] | None,
    keep: Callable[[Record], bool],
    since_ms: int | None = None,
) -> list[Record]:
    """The records of ``topic`` (``only`` those partitions) that ``keep`` accepts."""
    if only is not None and not only:
        return []
    reader = TopicReader(bootstrap=bootstrap, extra=extra, client_id="ghl-consumer-trace")
    kept: list[Record] = []
    try:
        await reader.open([topic], only=only, since_ms=since_ms)
        while records := await reader.read(10_000):
            kept.extend(record for record in records if keep(record))
    finally:
        await reader.close()
    return kept


async def _counts(
    bootstrap: str, extra: Mapping[str, Setting], topics: Sequence[str]
) -> dict[str, int]:
    reader = TopicReader(bootstrap=bootstrap, extra=extra, client_id="ghl-consumer-trace")
    try:
        return await reader.partition_counts(topics)
    finally:
        await reader.close()


async def _committed(
    bootstrap: str, extra: Mapping[str, Setting], group: str, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[int, str | None]]:
    """``group``'s committed offsets, read as an outsider (no subscription, no commit)."""
    if not partitions:
        return {}
    reader = TopicReader(
        bootstrap=bootstrap, extra=extra, group_id=group, client_id="ghl-consumer-trace"
    )
    try:
        return await reader.committed_points(partitions)
    finally:
        await reader.close()


def _matcher(kind: str, values: frozenset[str]) -> Callable[[Record], bool]:
    """Whether a source record is the person's: keyed by one of ``values``, or (checked only
    when the value mentions one) its ``userId`` / ``anonymousId`` / ``messageId`` is one."""
    keys = frozenset(v.encode() for v in values)
    fields = ("messageId",) if kind == "message-id" else ("userId", "anonymousId")

    def keep(record: Record) -> bool:
        if kind != "message-id" and record.key in keys:
            return True
        value = record.value or b""
        if not any(key in value for key in keys):
            return False
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        return isinstance(event, dict) and any(event.get(f) in values for f in fields)

    return keep


async def trace(
    settings: Settings, who: Query, *, show_personal_data: bool, highlevel: bool
) -> dict[str, object]:
    """Read and assemble the journey of ``who`` (see the module docstring): ``{"query",
    "keys", "records": [entries], "highlevel": [...]}``. Raises ``KafkaAdapterError``."""
    kafka = settings.kafka
    bootstrap, extra = kafka.bootstrap_servers, kafka.extra_settings()
    keys: set[str] = set()
    if who.kind == "email":
        person = await read_person(
            bootstrap=bootstrap,
            topic=kafka.profile_topic,
            email=who.value,
            extra=extra,
            cipher=profile_cipher(settings),
        )
        keys.update(person.profiles)
    elif who.kind != "message-id":
        keys.add(who.value)
    counts = await _counts(bootstrap, extra, kafka.topics)
    chosen: tuple[Partitioner, ...] | None = {
        "crc32": ("crc32",),
        "murmur2": ("murmur2",),
        "both": PARTITIONERS,
        "all": None,
    }[who.partitioner]
    if who.kind == "message-id":
        chosen = None
    sources = partitions_of(keys, counts, chosen)
    match = _matcher(who.kind, frozenset({who.value} if who.kind == "message-id" else keys))

    def keep(record: Record) -> bool:
        stamp = record.timestamp_ms
        if who.until_ms is not None and stamp is not None and stamp > who.until_ms:
            return False
        return match(record)

    found: list[Record] = []
    for topic in kafka.topics:
        only = {tp for tp in sources if tp[0] == topic}
        found.extend(await _read(bootstrap, extra, topic, only, keep, who.since_ms))
    records = oldest_first(found)
    mapper = build_mapper(settings.targets(), settings.mapping.options())
    outcomes = remap(mapper, records)
    upserts = [o for outs in outcomes for o in outs if isinstance(o, ContactUpsert)]
    contacts = {u.contact_key for u in upserts}
    committed = await _committed(
        bootstrap, extra, kafka.group_id, sorted({(r.topic, r.partition) for r in records})
    )
    findings = await _findings(settings, records, committed, upserts, who.since_ms)
    hide = None if show_personal_data else Hider(secrets.token_bytes(16))

    def mask(payload: Mapping[str, object]) -> dict[str, object]:
        return dict(payload) if show_personal_data else mask_payload(payload, hide)

    result: dict[str, object] = {
        "query": {
            "kind": who.kind,
            "value": _shown(who, show_personal_data),
            "since": who.since_ms,
            "until": who.until_ms,
        },
        "keys": len(keys | contacts),
        "records": journey(findings, outcomes, mask),
    }
    if highlevel:
        result["highlevel"] = await _highlevel(settings, outcomes, mask)
    return result


async def _findings(
    settings: Settings,
    records: Sequence[Record],
    committed: Mapping[tuple[str, int], tuple[int, str | None]],
    upserts: Sequence[ContactUpsert],
    since_ms: int | None,
) -> Findings:
    """``records`` with what else names them: the delivery, dead-letter and parking records
    (read from the partitions their keys hash to), the parking group's committed offsets."""
    kafka = settings.kafka
    bootstrap, extra = kafka.bootstrap_servers, kafka.extra_settings()
    own = own_partitioners(extra)
    counts = await _counts(
        bootstrap, extra, [kafka.delivery_topic, kafka.dead_letter_topic, kafka.parking_topic]
    )
    digests = {contact_digest(u.contact_key) for u in upserts}
    digest_keys = frozenset(d.encode() for d in digests)
    deliveries = await _read(
        bootstrap,
        extra,
        kafka.delivery_topic,
        partitions_of(digests, {kafka.delivery_topic: counts.get(kafka.delivery_topic, 0)}, own),
        lambda r: r.key in digest_keys,
        since_ms,
    )
    wheres = {f"{r.topic}/{r.partition}/{r.offset}" for r in records}
    record_keys = {r.key.decode("utf-8", "replace") for r in records if r.key}
    keyless = any(not r.key for r in records)
    dlq = kafka.dead_letter_topic
    letters = await _read(
        bootstrap,
        extra,
        dlq,
        partitions_of(record_keys, {dlq: counts.get(dlq, 0)}, None if keyless else own),
        lambda r: _dead_letter_source(r) in wheres,
        since_ms,
    )
    parking_keys = {parking_key(u).decode("utf-8", "replace") for u in upserts}
    parking_count = {kafka.parking_topic: counts.get(kafka.parking_topic, 0)}
    parked = await _read(
        bootstrap,
        extra,
        kafka.parking_topic,
        partitions_of(parking_keys, parking_count, own),
        lambda r: any(
            name == "ghl.park.source" and value.decode("utf-8", "replace") in wheres
            for name, value in r.headers
        ),
        since_ms,
    )
    # The parking group is named after the parking topic (consumer.kafka.parking).
    parking_points = await _committed(
        bootstrap,
        extra,
        kafka.parking_topic,
        sorted({(r.topic, r.partition) for r in parked}),
    )
    return Findings(
        records=records,
        committed=committed,
        deliveries=[d for r in deliveries if (d := DeliveryRecord.decode(r.value))],
        dead_letters=letters,
        parked=parked,
        parking_committed={p: offset for (_t, p), (offset, _m) in parking_points.items()},
    )


def _dead_letter_source(record: Record) -> str:
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers}
    topic = headers.get("ghl.source.topic")
    return f"{topic}/{headers.get('ghl.source.partition')}/{headers.get('ghl.source.offset')}"


async def _highlevel(
    settings: Settings,
    outcomes: Sequence[Sequence[Outcome]],
    mask: Callable[[Mapping[str, object]], dict[str, object]],
) -> list[dict[str, object]]:
    """Per integration with an upsert: the contact HighLevel holds for the last upsert's email
    (``"by": "email"``), or its phone when it sent none (``"by": "phone"``), and the fields of
    that upsert it does not reflect."""
    last: dict[str, Mapping[str, object]] = {}
    for outs in outcomes:
        for outcome in outs:
            if isinstance(outcome, ContactUpsert):
                last[outcome.integration_id] = outcome.payload()
    shown: list[dict[str, object]] = []
    client = HighLevelClient(base_url=settings.highlevel.api_base_url)
    try:
        for integration in settings.integrations:
            sent = last.get(integration.id)
            if sent is None:
                continue
            if integration.access_token is None:  # an OAuth integration: no static token here
                shown.append({"integration": integration.id, "skipped": "OAuth integration"})
                continue
            token, location = integration.access_token.reveal(), integration.location_id
            email, phone = sent.get("email"), sent.get("phone")
            if isinstance(email, str):
                by = "email"
                answer = await client.find_by_email(token=token, location_id=location, email=email)
            elif isinstance(phone, str):
                by = "phone"
                answer = await client.find_by_phone(token=token, location_id=location, phone=phone)
            else:
                shown.append({"integration": integration.id, "skipped": "no email or phone"})
                continue
            entry: dict[str, object] = {
                "integration": integration.id,
                "by": by,
                "status": answer.status,
            }
            if answer.status != 200:
                entry["error"] = answer.message or answer.error
            else:
                contact = answer.contact
                entry["contact"] = None if contact is None else mask(contact)
                entry["differs"] = (
                    sorted(k for k in sent if k != "locationId")
                    if contact is None
                    else ignored_fields(sent, contact)
                )
            shown.append(entry)
    finally:
        await client.close()
    return shown


def _shown(who: Query, show_personal_data: bool) -> str:
    if show_personal_data or who.kind == "message-id":
        return who.value
    if who.kind == "email":
        return mask_email(who.value)
    return Hider(b"trace")(who.value)


def write(result: Mapping[str, object], out: TextIO, *, as_json: bool) -> None:
    """The report: one JSON document, or one line per record then the HighLevel contacts."""
    if as_json:
        out.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    entries = result["records"]
    assert isinstance(entries, list)
    for entry in entries:
        out.write(text_line(entry) + "\n")
    highlevel = result.get("highlevel")
    for found in highlevel if isinstance(highlevel, list) else []:
        where = f"HighLevel [{found['integration']}]"
        if "skipped" in found:
            out.write(f"{where}: not looked up ({found['skipped']})\n")
            continue
        if "error" in found:
            out.write(f"{where}: {found['status']} {found['error']}\n")
            continue
        differs = ", ".join(found["differs"]) or "nothing"
        contact = orjson.dumps(found["contact"]).decode()
        out.write(f"{where} by {found['by']}: {contact}; differs: {differs}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_log_level_argument(parser, default="WARNING")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", metavar="ID", help="records keyed by (or with) this userId")
    who.add_argument("--anonymous-id", metavar="ID", help="records keyed by this anonymousId")
    who.add_argument("--email", metavar="EMAIL", help="the profiles holding this email")
    who.add_argument("--message-id", metavar="ID", help="one message (reads every partition)")
    parser.add_argument("--since", metavar="ISO8601", help="records from this time (UTC)")
    parser.add_argument("--until", metavar="ISO8601", help="records up to this time (UTC)")
    parser.add_argument(
        "--partitioner",
        choices=PARTITIONER_CHOICES,
        default="both",
        help="how producers chose the source partition: crc32 (librdkafka's default), murmur2 "
        "(the Java client's), both (default: read the partition each gives), all",
    )
    parser.add_argument(
        "--highlevel",
        action="store_true",
        help="also show the contact HighLevel holds now (needs the integrations' tokens)",
    )
    parser.add_argument(
        "--show-personal-data", action="store_true", help="print emails, phones, names in clear"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document")


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer trace``: see the module docstring for the exit status."""
    configure_logging(args.log_level, log_format=args.log_format)

    def body() -> int:
        who = query(args)
        settings = load(
            args.config,
            placeholder_location=None if args.highlevel else "TRACE_TOOL_LOCATION_ID",
            read_secrets=args.highlevel,
            kafka_secrets=True,
            profile_keys=who.kind == "email",
        )
        result = asyncio.run(
            trace(
                settings,
                who,
                show_personal_data=args.show_personal_data,
                highlevel=args.highlevel,
            )
        )
        write(result, sys.stdout, as_json=args.json)
        if not result["records"]:
            print("ghl-consumer trace: no records found", file=sys.stderr)
            return 1
        return 0

    return run_command("ghl-consumer trace", body, Failure((KafkaAdapterError,), "kafka", 1))
