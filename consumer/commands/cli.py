"""The `ghl-consumer` command line: one subcommand per module, imported only when chosen.

Each subcommand module exposes ``add_arguments(parser)`` and ``main(args) -> int`` (the exit
code). Importing lazily keeps ``ghl-consumer map`` free of aiohttp and librdkafka start-up cost.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from consumer import __version__

# name -> (module, one-line help). Only subcommands that work are listed.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("consumer.commands.run", "consume events and upsert contacts into HighLevel"),
    "map": (
        "consumer.commands.map_events",
        "dry run: map JSONL events from stdin to upsert payloads on stdout",
    ),
    "sandbox": ("consumer.commands.sandbox", "serve the HighLevel contacts API emulator"),
    "dlq": ("consumer.commands.dlq", "dead letters: list them, replay them after a fix"),
    "audit": (
        "consumer.commands.audit",
        "check that every identity event is in HighLevel, DLQ or parking",
    ),
    "forget": (
        "consumer.commands.forget",
        "erase a person: profiles, optionally the HighLevel contact; records the erasure",
    ),
    "oauth": (
        "consumer.commands.oauth",
        "OAuth app installations: exchange an install code, status, reconnect",
    ),
    "trace": (
        "consumer.commands.trace",
        "one person's events end to end: mapping, commit, HighLevel call, DLQ, parking",
    ),
    "demo": ("consumer.commands.demo", "local Kafka + sandbox + sample events, end to end"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Return the parser; only the ``selected`` subcommand's module is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="ghl-consumer",
        description="Kafka identity events -> HighLevel contact upserts.",
    )
    parser.add_argument("--version", action="version", version=f"ghl-consumer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    selected = arguments[0] if arguments and arguments[0] in SUBCOMMANDS else None
    args = build_parser(selected).parse_args(arguments)
    code: int = args._main(args)
    return code
