"""``ghl-consumer map``: the dry run. JSONL events on stdin -> one JSON line per input line.

Output lines (``docs/architecture.md``, "Mapping rules")::

    {"line": N, "action": "upsert", "integration": ID, "payload": {...}}
    {"line": N, "action": "drop", "reason": R}
    {"line": N, "action": "reject", "reason": R, "error": TEXT}

An event routed to several integrations gives one line per integration, with the same ``line``.
When more than one integration is configured, per-integration drop and reject lines also carry
``"integration"``; in tag mode ``add`` an upsert line carries ``"add_tags"`` (the tags the
consumer adds after the upsert), and ``"omitted": [{"field", "reason", "path"}, ...]`` when
fields of the event were left out (wrong type, too long, invalid; see ``Omitted``). Profiles
and ``messageId``s are remembered from line to line. Nothing is sent anywhere and no token is
read. Without ``--config`` and without ``GHL_LOCATION_ID`` a placeholder location id is used
(and said on stderr).

Exit status: 0 when every line was processed (rejects are output, not failures), 2 for a
configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import BinaryIO

import orjson

from consumer.commands.preamble import add_config_argument, load, needs_placeholder, run_command
from consumer.core.events import ContactUpsert, Drop, Outcome
from consumer.core.mapping import Mapper, build_mapper

PLACEHOLDER_LOCATION = "DRY_RUN_LOCATION_ID"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(
        parser, from_environment=False, help="TOML configuration (default: environment only)"
    )
    parser.add_argument(
        "--topic",
        help="treat events as read from this topic, for topic routing "
        "(default: the first configured topic)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the dry run on ``sys.stdin``/``sys.stdout``; return the exit status."""
    if needs_placeholder(args.config):
        print(
            f"ghl-consumer map: no --config and GHL_LOCATION_ID is not set; using placeholder "
            f"location id {PLACEHOLDER_LOCATION}",
            file=sys.stderr,
        )

    def dry_run() -> int:
        settings = load(args.config, placeholder_location=PLACEHOLDER_LOCATION, read_secrets=False)
        try:
            run(
                build_mapper(settings.targets(), settings.mapping.options()),
                sys.stdin.buffer,
                sys.stdout.buffer,
                topic=args.topic or settings.kafka.topics[0],
                label_integrations=len(settings.integrations) > 1,
            )
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, as Unix filters do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0

    return run_command("ghl-consumer map", dry_run)


def run(
    mapper: Mapper, source: BinaryIO, sink: BinaryIO, *, topic: str, label_integrations: bool
) -> None:
    """Map every line of ``source`` and write the result lines to ``sink``, flushing per input
    line so an interactive session sees answers as it types."""
    for number, raw in enumerate(source, start=1):
        value = raw.rstrip(b"\r\n")
        outcomes = mapper.map_record(value=value, key=None, topic=topic, now=time.monotonic())
        for outcome in outcomes:
            sink.write(orjson.dumps(output_line(number, outcome, label_integrations)) + b"\n")
        sink.flush()


def output_line(number: int, outcome: Outcome, label_integrations: bool) -> dict[str, object]:
    """The JSON object for one outcome of input line ``number``."""
    if isinstance(outcome, ContactUpsert):
        line: dict[str, object] = {
            "line": number,
            "action": "upsert",
            "integration": outcome.integration_id,
            "payload": outcome.payload(),
        }
        if outcome.tags_to_add():
            line["add_tags"] = list(outcome.tags_to_add())
        if outcome.omitted:
            line["omitted"] = [
                {"field": o.field, "reason": o.reason.value, "path": o.path}
                for o in outcome.omitted
            ]
        return line
    if isinstance(outcome, Drop):
        line = {"line": number, "action": "drop", "reason": outcome.reason.value}
    else:
        line = {
            "line": number,
            "action": "reject",
            "reason": outcome.reason.value,
            "error": outcome.error,
        }
    if label_integrations and outcome.integration_id is not None:
        line["integration"] = outcome.integration_id
    return line
