"""``ghl-consumer forget``: erase one person from what the consumer keeps (README, "Personal
data").

Given ``--user-id``, ``--anonymous-id`` (a profile key: the record key, else the userId, else
the anonymousId) or ``--email``, it

1. reads the profile changelog for the person's profiles: the one under the key given, and
   every profile holding the email (given, or held by that profile);
2. writes a tombstone for each of their keys, in every changelog partition holding one of its
   profiles (partitioned profile state: its events' partitions): compaction removes the
   values from the topic
   (within the profile topic's ``max.compaction.lag.ms``), and every running member drops them
   from memory within ``mapping.erasure_check_seconds`` (``ProfileChangelog.follow``);
3. with ``--delete-contact``, for each configured integration, finds the HighLevel contact by
   each of those emails (``GET /contacts/search/duplicate``) and deletes it: in its location
   with its private integration token, or, for an OAuth integration, in each location it
   reaches (its fixed one, else the installation's listed or discovered locations) with that
   location's token from the shared token store (``REDIS_URL``), as ``run`` gets them;
4. writes an erasure record to ``kafka.erasure_topic``: when, what was done, and a SHA-256 of
   the identifier given, never the identifier itself.

It prints what was erased with the identifier masked. Exit status: 0 done; 1 Kafka failed, or a
contact could not be deleted (the rest is done: run it again); 2 a configuration error or an
email that is not one. Events already in the source, dead-letter or parking topics are not
rewritten: they expire with those topics' retention.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

from consumer.commands.credentials import Installation, open_installations
from consumer.commands.preamble import (
    Failure,
    add_config_argument,
    add_log_level_argument,
    configure_logging,
    load,
    profile_cipher,
    run_command,
)
from consumer.config import Integration, Settings
from consumer.core.normalise import mask_email, normalise_email
from consumer.errors import (
    ConfigError,
    InstallationBroken,
    KafkaAdapterError,
    OAuthError,
    TokenStoreError,
)
from consumer.highlevel.client import HighLevelClient
from consumer.highlevel.verdicts import Answer
from consumer.kafka.admin import TopicSpec, ensure_topics
from consumer.kafka.producer import KafkaProducer
from consumer.state.changelog import read_person

_PLACEHOLDER_LOCATION: Final = "FORGET_TOOL_LOCATION_ID"
# Erasure records hold no personal data and are the evidence that an erasure happened: kept.
_ERASURE_TOPIC_CONFIG: Final = {"retention.ms": "-1"}


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom to forget: ``kind`` is ``user-id``, ``anonymous-id`` or ``email`` (normalised)."""

    kind: str
    value: str

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of ``kind:value``: what the erasure record keeps."""
        return "sha256:" + hashlib.sha256(f"{self.kind}:{self.value}".encode()).hexdigest()

    @property
    def masked(self) -> str:
        """For output: the email masked, an id by its digest's first characters."""
        if self.kind == "email":
            return mask_email(self.value)
        return f"{self.kind} {self.digest[:19]}..."


def subject(args: argparse.Namespace) -> Subject:
    """The person named on the command line. Raises ConfigError for an email that is not one."""
    if args.email is not None:
        email = normalise_email(args.email)
        if email is None:
            raise ConfigError("--email: not a valid email address")
        return Subject("email", email)
    if args.user_id is not None:
        return Subject("user-id", args.user_id)
    return Subject("anonymous-id", args.anonymous_id)


async def forget(settings: Settings, who: Subject, *, delete_contact: bool, out: TextIO) -> int:
    """Erase ``who`` (see the module docstring); returns the exit status. Raises
    ``KafkaAdapterError`` (nothing is recorded as erased then: run it again)."""
    kafka = settings.kafka
    extra = kafka.extra_settings()
    person = await read_person(
        bootstrap=kafka.bootstrap_servers,
        topic=kafka.profile_topic,
        key=None if who.kind == "email" else who.value,
        email=who.value if who.kind == "email" else None,
        extra=extra,
        cipher=profile_cipher(settings),
    )
    profiles, partitions = person.profiles, person.partitions
    keys = sorted(profiles.keys() | ({who.value} if who.kind != "email" else set()))
    emails = sorted(
        {p.fields["email"] for p in profiles.values() if "email" in p.fields}
        | ({who.value} if who.kind == "email" else set())
    )
    await ensure_topics(
        kafka.bootstrap_servers,
        [TopicSpec(kafka.erasure_topic, config=_ERASURE_TOPIC_CONFIG)],
        extra=extra,
    )
    producer = KafkaProducer(bootstrap=kafka.bootstrap_servers, extra=extra)
    try:
        for key in keys:
            where: Sequence[int | None] = partitions.get(key, [None])
            await _tombstone(producer, kafka.profile_topic, key, where)
        print(
            f"forgot {who.masked}: {len(profiles)} profile(s) found, {len(keys)} key(s) "
            f"tombstoned in {kafka.profile_topic}; running members drop them within "
            f"{settings.mapping.erasure_check_seconds:g}s",
            file=out,
        )
        contacts: dict[str, str] = {}
        if delete_contact:
            contacts = await delete_contacts(settings, emails, out)
        record = {
            "type": "erasure",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "subject": {"kind": who.kind, "hash": who.digest},
            "profilesTombstoned": len(keys),
            "profileTopic": kafka.profile_topic,
            "contacts": contacts,  # integration id -> deleted | none | failed
        }
        landed = await producer.produce(kafka.erasure_topic, key=None, value=orjson.dumps(record))
    finally:
        await producer.close()
    print(f"erasure record: {landed.topic}[{landed.partition}]@{landed.offset}", file=out)
    return 1 if "failed" in contacts.values() else 0


async def _tombstone(
    producer: KafkaProducer, topic: str, key: str, partitions: Sequence[int | None]
) -> None:
    """A tombstone for ``key`` in each of ``partitions`` holding its profile (partitioned
    profile state keeps a profile in its events' partition, not its key's; None: the
    partitioner's, for a key with no profile found). Raises ``ProduceFailedError``."""
    for partition in partitions:
        [failure] = await producer.produce_many(topic, [(key.encode(), None)], partition=partition)
        if failure is not None:
            raise failure


async def delete_contacts(settings: Settings, emails: list[str], out: TextIO) -> dict[str, str]:
    """Delete, in every location each configured integration reaches, the contact holding each
    of ``emails``; returns integration id -> ``deleted``, ``none`` or ``failed`` (any of its
    locations failed, or its OAuth tokens could not be had: run it again)."""
    results: dict[str, str] = {}
    client = HighLevelClient(base_url=settings.highlevel.api_base_url)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        installations = open_installations(settings, closers) if settings.oauth else {}
        for integration in settings.integrations:
            where = f"HighLevel {integration.id}"
            if integration.oauth is not None:
                outcomes = await _delete_with_oauth(
                    client, installations[integration.oauth], integration, emails, out
                )
            else:
                assert integration.access_token is not None  # exactly one of the two is set
                token = integration.access_token.reveal()
                outcomes = [
                    await _delete_in(client, token, integration.location_id, emails, where, out)
                ]
            outcome = "failed" if "failed" in outcomes else "none"
            outcome = "deleted" if outcome == "none" and "deleted" in outcomes else outcome
            if outcome == "none":
                print(f"{where}: no contact with that email", file=out)
            results[integration.id] = outcome
    finally:
        await client.close()
        for close in closers:
            await close()
    return results


async def _delete_with_oauth(
    client: HighLevelClient,
    installation: Installation,
    integration: Integration,
    emails: list[str],
    out: TextIO,
) -> list[str]:
    """``_delete_in`` each location the OAuth ``integration`` reaches, with its token."""
    where = f"HighLevel {integration.id}"
    app, tokens = installation.app, installation.tokens
    try:
        if integration.target.location_path is None:
            locations = [integration.location_id]
        elif not app.discover:
            locations = list(app.locations)
        else:
            locations = await installation.client.installed_locations(
                await tokens.company_token(), company_id=app.company_id, app_id=app.app_id
            )
        outcomes = []
        for location in locations:
            token = await tokens.location_token(location)
            outcomes.append(
                await _delete_in(client, token, location, emails, f"{where} {location}", out)
            )
    except (InstallationBroken, OAuthError, TokenStoreError) as failure:
        print(f"{where}: no OAuth token: {failure}", file=out)
        return ["failed"]
    return outcomes


async def _delete_in(
    client: HighLevelClient,
    token: str,
    location_id: str,
    emails: list[str],
    where: str,
    out: TextIO,
) -> str:
    """Delete the contact holding each of ``emails`` in ``location_id``: ``deleted``,
    ``none`` or ``failed``."""
    outcome = "none"
    for email in emails:
        found = await client.find_by_email(token=token, location_id=location_id, email=email)
        contact = found.contact if found.status == 200 else None
        contact_id = contact.get("id") if contact is not None else None
        if found.status != 200:
            outcome = "failed"
            print(f"{where}: search failed: {_why(found)}", file=out)
            continue
        if not isinstance(contact_id, str):
            continue
        deleted = await client.delete_contact(token=token, contact_id=contact_id)
        if deleted.status == 200:
            outcome = "deleted" if outcome != "failed" else outcome
            print(f"{where}: contact {contact_id} deleted", file=out)
        else:
            outcome = "failed"
            print(f"{where}: delete failed: {_why(deleted)}", file=out)
    return outcome


def _why(answer: Answer) -> str:
    """The status and HighLevel's message (token starred by the client), or why none came."""
    status = answer.status if answer.status is not None else "no answer"
    return f"{status} {answer.message or answer.error or ''}".strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_log_level_argument(parser, default="WARNING")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", metavar="ID", help="the profile key of a userId")
    who.add_argument("--anonymous-id", metavar="ID", help="the profile key of an anonymousId")
    who.add_argument("--email", metavar="EMAIL", help="every profile holding this email")
    parser.add_argument(
        "--delete-contact",
        action="store_true",
        help="also delete the HighLevel contact with the person's email, in every location "
        "the integrations reach (needs their tokens; OAuth ones through REDIS_URL)",
    )


def main(args: argparse.Namespace) -> int:
    """``ghl-consumer forget``: see the module docstring for the exit status."""
    configure_logging(args.log_level, log_format=args.log_format)

    def body() -> int:
        who = subject(args)
        settings = load(
            args.config,
            placeholder_location=None if args.delete_contact else _PLACEHOLDER_LOCATION,
            read_secrets=args.delete_contact,
            kafka_secrets=True,
            profile_keys=True,  # to search encrypted profiles for the email
        )
        work = forget(settings, who, delete_contact=args.delete_contact, out=sys.stdout)
        return asyncio.run(work)

    return run_command("ghl-consumer forget", body, Failure((KafkaAdapterError,), "kafka", 1))
