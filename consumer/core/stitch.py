"""The records of the stitch topic: identity stitching across partitions (``docs/architecture.md``,
"Profiles").

With partitioned profile state a profile lives in the partition of the events that wrote it, so
the profile of an anonymousId (or an alias's previousId) X is often not in the partition p of
the user U whose event names it. The merge goes through Kafka, in two records of the stitch
topic (co-partitioned with the input, like the changelog):

- ``StitchRequest``, key X, to stitch partition P(X) (every partition X's events may be in):
  "hand X's profile to U, whose profile is in partition p". The member owning P(X) empties X's
  profile there and answers with
- ``StitchMerge``, key U, to stitch partition p: X's profile (``profile``: its bytes, sealed
  with the ``[profiles]`` encryption under the record key U when it is on: personal data). The
  member owning p folds it into U's profile, U's own values winning (``Mapper.fold``).

Both are idempotent: a request re-read finds X already empty and does nothing; a merge folded
twice changes nothing, since U's values win. Value: JSON, ``{"v": 1, "into": U, "p": p}`` for
a request, ``{"v": 1, "from": X, "profile": "<base64>"}`` for a merge. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import orjson

_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class StitchRequest:
    """Hand the profile of ``source`` (the record key) to ``target``, whose profile is in
    partition ``partition``."""

    source: str
    target: str
    partition: int

    def key(self) -> bytes:
        return self.source.encode()

    def value(self) -> bytes:
        return orjson.dumps({"v": _VERSION, "into": self.target, "p": self.partition})


@dataclass(frozen=True, slots=True)
class StitchMerge:
    """Fold ``profile`` (a profile's bytes, sealed when encryption is on) of ``source`` into the
    profile of ``target`` (the record key)."""

    source: str
    target: str
    profile: bytes

    def key(self) -> bytes:
        return self.target.encode()

    def value(self) -> bytes:
        profile = base64.b64encode(self.profile).decode()
        return orjson.dumps({"v": _VERSION, "from": self.source, "profile": profile})


@dataclass(frozen=True, slots=True)
class BadStitch:
    """A record of the stitch topic that is neither: why (it is dead-lettered)."""

    error: str


def decode_stitch(
    key: bytes | None, value: bytes | None
) -> StitchRequest | StitchMerge | BadStitch:
    """The stitch record keyed ``key`` with ``value``, or why it is not one. Never raises."""
    if not key:
        return BadStitch("stitch record without a key")
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return BadStitch("stitch record value is not JSON")
    if not isinstance(obj, dict) or obj.get("v") != _VERSION:
        return BadStitch("stitch record value is not a version 1 object")
    record_key = key.decode("utf-8", "backslashreplace")
    into, partition = obj.get("into"), obj.get("p")
    if isinstance(into, str) and into and type(partition) is int and partition >= 0:
        return StitchRequest(source=record_key, target=into, partition=partition)
    source, profile = obj.get("from"), obj.get("profile")
    if isinstance(source, str) and source and isinstance(profile, str):
        try:
            data = base64.b64decode(profile, validate=True)
        except binascii.Error:
            return BadStitch("stitch merge: profile is not base64")
        return StitchMerge(source=source, target=record_key, profile=data)
    return BadStitch("stitch record: neither a request (into, p) nor a merge (from, profile)")
