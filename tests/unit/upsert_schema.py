"""HighLevel's upsert request schema, strict: unknown top-level properties are forbidden.

``tests/data/upsert_contact_v2021-07-28.resolved.json`` is an unmodified copy of
``shared/highlevel/upsert_contact_v2021-07-28.resolved.json`` (refs resolved from the official
spec), so the tests run from a fresh clone. ``bench/bench_fidelity.py`` checks every upsert of the
real-world corpus with the same validator (``payload_errors``).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_FILE = Path(__file__).parents[1] / "data" / "upsert_contact_v2021-07-28.resolved.json"


@cache
def _validator() -> jsonschema.Draft7Validator:
    schema: dict[str, Any] = copy.deepcopy(json.loads(SCHEMA_FILE.read_text())["request"])
    schema["additionalProperties"] = False
    # The spec types numeric and monetary custom field values as "object" while documenting
    # numbers (examples 100 and 100.5; docs/highlevel.md, "Known pitfalls"): a slip that would
    # make every numeric custom field invalid. Read them as numbers.
    for variant in schema["properties"]["customFields"]["items"]["anyOf"]:
        if variant["x-ref"] in ("NumericField", "MonetoryField"):
            variant["properties"]["field_value"]["type"] = "number"
    # ``dateOfBirth`` is typed "object" too, while its description lists string formats
    # (``YYYY-MM-DD`` and seven others) and its example is a string: read it as a string.
    schema["properties"]["dateOfBirth"]["type"] = "string"
    return jsonschema.Draft7Validator(schema)


def validate_payload(payload: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``payload`` is a valid strict upsert body."""
    _validator().validate(payload)


def payload_errors(payload: dict[str, Any]) -> list[str]:
    """Every way ``payload`` breaks the strict upsert schema, as ``path: keyword`` (``(body)``
    for the top level), sorted; empty when valid. Never quotes a value: they are personal data."""
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.validator}"
        for error in _validator().iter_errors(payload)
    )
