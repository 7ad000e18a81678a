"""`ghl-consumer map` as users run it: a subprocess reading JSONL on stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, GUIDE_UPSERT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
LOCATION = "ve9EPM428h8vShlRW1KT"


def run_map(
    lines: list[Any], *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the dry run on ``lines`` (dicts, or raw bytes); return (exit code, output, stderr)."""
    stdin = b"".join(
        (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GHL_", "KAFKA_"))}
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "map", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )
    output = [orjson.loads(line) for line in result.stdout.splitlines()]
    return result.returncode, output, result.stderr.decode()


IDENTIFY_SAM = {**GUIDE_IDENTIFY, "messageId": "m-1"}
LEAD_SAM = {**GUIDE_LEAD, "messageId": "m-2"}


def test_guide_example_through_the_cli() -> None:
    code, output, stderr = run_map(
        [IDENTIFY_SAM, LEAD_SAM, {"type": "page", "userId": "lead-987"}, LEAD_SAM],
        env={"GHL_LOCATION_ID": LOCATION},
    )
    assert code == 0, stderr
    assert output[1] == {
        "line": 2,
        "action": "upsert",
        "integration": "default",
        "payload": GUIDE_UPSERT,
    }
    assert output[0]["action"] == "upsert"
    assert output[2:] == [
        {"line": 3, "action": "drop", "reason": "not_mapped"},
        {"line": 4, "action": "drop", "reason": "duplicate"},
    ]
    assert stderr == ""


def test_one_output_line_per_bad_input_line_with_readable_errors() -> None:
    code, output, stderr = run_map(
        [
            b"{not json",
            b"[1]",
            b'{"userId": "u"}',
            b'{"type": "identify", "userId": "\xff"}',
            {"type": "purchase"},
            {"type": "identify", "userId": "u", "traits": "x"},
            {"type": "identify", "userId": "u", "traits": {"email": 42}},
            {"type": "identify", "userId": "u", "traits": {"first_name": "A"}},
            b"",
            {"type": "Identify", "userId": "u", "traits": {"email": "a@x.io", "firstName": True}},
        ]
    )
    assert code == 0
    assert [(o["line"], o["action"], o.get("reason")) for o in output] == [
        (1, "reject", "invalid_json"),
        (2, "reject", "not_an_object"),
        (3, "reject", "missing_type"),
        (4, "reject", "invalid_utf8"),
        (5, "reject", "unknown_type"),
        (6, "reject", "wrong_type"),
        (7, "reject", "no_identifier"),
        (8, "reject", "no_identifier"),
        (9, "reject", "empty_value"),
        (10, "upsert", None),
    ]
    assert (
        output[0]["error"]
        == "invalid JSON at character 1: unexpected character, expected a string key"
    )
    assert output[6]["error"].endswith(": traits.email has the wrong type")
    # a bad field is left out, and said so; the rest of the event is sent
    assert output[9]["payload"]["email"] == "a@x.io"
    assert output[9]["omitted"] == [
        {"field": "firstName", "reason": "wrong_type", "path": "traits.firstName"}
    ]
    assert "placeholder location id DRY_RUN_LOCATION_ID" in stderr


def test_multi_integration_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        """
        [[integrations]]
        id = "us"
        location_id = "LOC-US"
        access_token = { env = "TOKEN_US" }
        [[integrations]]
        id = "crm2"
        location_id = "LOC-2"
        access_token = { file = "/run/secrets/not-read-by-the-dry-run" }
        tag_mode = "add"
        [integrations.fields]
        remove = ["dnd"]
        [[integrations.fields.custom]]
        id = "fSource"
        source = "properties.source"
        """
    )
    code, output, stderr = run_map(
        [IDENTIFY_SAM, LEAD_SAM, {"type": "track", "userId": "x", "event": "Other"}],
        "--config",
        str(config),
    )
    assert code == 0, stderr
    assert [(o["line"], o.get("integration"), o["action"]) for o in output] == [
        (1, "us", "upsert"),
        (1, "crm2", "upsert"),
        (2, "us", "upsert"),
        (2, "crm2", "upsert"),
        (3, "us", "drop"),
        (3, "crm2", "drop"),
    ]
    crm2 = output[3]
    assert crm2["payload"]["locationId"] == "LOC-2"
    assert "dnd" not in crm2["payload"]
    assert "tags" not in crm2["payload"]
    assert crm2["add_tags"] == ["website-lead"]
    assert crm2["payload"]["customFields"] == [
        {"id": "fSource", "field_value": "Pricing Page Form"}
    ]


def test_topic_routing_option(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        """
        [kafka]
        topics = ["events", "eu"]
        [[integrations]]
        id = "eu"
        location_id = "LOC-EU"
        access_token = { env = "T" }
        [integrations.routing]
        topics = ["eu"]
        """
    )
    _, default_topic, _ = run_map([IDENTIFY_SAM], "--config", str(config))
    assert default_topic == [{"line": 1, "action": "drop", "reason": "not_routed"}]
    _, eu, _ = run_map([IDENTIFY_SAM], "--config", str(config), "--topic", "eu")
    assert eu[0]["integration"] == "eu"


def test_documented_example_config_runs() -> None:
    code, output, stderr = run_map(
        [IDENTIFY_SAM, {**LEAD_SAM, "event": "generate_lead", "properties": {"plan": "pro"}}],
        "--config",
        str(ROOT / "examples" / "config.toml"),
    )
    assert code == 0, stderr
    assert output[1]["payload"]["customFields"] == [
        {"id": "6dvNaf7VhkQ9snc5vnjJ", "field_value": "pro"}
    ]
    assert "dnd" not in output[1]["payload"]


def test_configuration_error_is_one_readable_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[[integrations]]\nid = 'a'\naccess_token = { env = 'T' }\n")
    code, output, stderr = run_map([IDENTIFY_SAM], "--config", str(config))
    assert code == 2
    assert output == []
    assert (
        stderr == "ghl-consumer map: configuration error: integrations[0].location_id: required\n"
    )
