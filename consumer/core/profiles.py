"""What the consumer remembers per user: normalised identity fields and the last consent
decision per consent category, so a later event without traits (e.g. "Lead Generated" after an
identify) still produces a complete contact.

``ProfileStore`` is the seam: the in-memory store here serves the dry run and tests; the engine
supplies a durable one (profiles serialise with ``to_bytes``/``from_bytes`` for a compacted
changelog topic).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

import orjson

from consumer.core.events import IDENTITY_FIELDS
from consumer.errors import ProfileDecodeError

# HighLevel field names a profile may hold, all normalised (phone in E.164).
_PROFILE_FIELDS: Final = frozenset(IDENTITY_FIELDS)
_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Profile:
    """Identity fields (HighLevel names -> normalised values) and consent (category -> granted)."""

    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    consent: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        unknown = set(self.fields) - _PROFILE_FIELDS
        if unknown:
            raise ValueError(f"not identity fields: {sorted(unknown)}")
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "consent", MappingProxyType(dict(self.consent)))

    def to_bytes(self) -> bytes:
        """Compact JSON: ``{"v": 1, "f": {...}, "c": {...}}``."""
        return orjson.dumps({"v": _FORMAT_VERSION, "f": dict(self.fields), "c": dict(self.consent)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Profile:
        """Inverse of ``to_bytes``. Raises ProfileDecodeError for anything else."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProfileDecodeError(f"profile is not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("v") != _FORMAT_VERSION:
            raise ProfileDecodeError("profile: not a version 1 profile object")
        fields, consent = obj.get("f"), obj.get("c")
        if not (
            isinstance(fields, dict)
            and isinstance(consent, dict)
            and all(isinstance(v, str) for v in fields.values())
            and all(isinstance(v, bool) for v in consent.values())
        ):
            raise ProfileDecodeError("profile: f must map to strings and c to booleans")
        try:
            return cls(fields=fields, consent=consent)
        except ValueError as exc:
            raise ProfileDecodeError(f"profile: {exc}") from None

    @classmethod
    def from_own_bytes(cls, data: bytes) -> Profile:
        """``from_bytes`` without its checks, for bytes ``to_bytes`` made in this process (a
        store's own copies): half the cost, on the mapper's path for every routed event."""
        obj = orjson.loads(data)
        profile = object.__new__(cls)
        object.__setattr__(profile, "fields", MappingProxyType(obj["f"]))
        object.__setattr__(profile, "consent", MappingProxyType(obj["c"]))
        return profile


EMPTY_PROFILE: Final = Profile()


def consent_suffix(decisions: Mapping[str, bool]) -> bytes:
    """How ``to_bytes`` ends for a profile whose consent is exactly ``decisions`` (the ``c``
    object is last; orjson keeps insertion order, which ``{**stored, **decisions}`` gives)."""
    return b'"c":' + orjson.dumps(decisions) + b"}"


class PersonProfiles:
    """One person's profiles, found by feeding a changelog in order (``ghl-consumer forget``):
    the profile under ``key`` and every profile whose email is ``email`` (normalised as
    profiles store it, ``normalise_email``), each as its latest record in its changelog
    partition leaves it (partitioned profile state may hold one key in several partitions).
    A record that is not a profile is skipped (it holds nothing this can read)."""

    def __init__(self, *, key: str | None = None, email: str | None = None) -> None:
        self._key = key
        self._email = email
        self._held: dict[tuple[str, int], Profile] = {}

    @property
    def profiles(self) -> dict[str, Profile]:
        """The person's profiles by key (of a key held in several partitions, the one fed
        last)."""
        return {key: profile for (key, _), profile in self._held.items()}

    @property
    def partitions(self) -> dict[str, list[int]]:
        """The changelog partitions holding each of those keys' profiles."""
        held: dict[str, list[int]] = {}
        for key, partition in sorted(self._held):
            held.setdefault(key, []).append(partition)
        return held

    def feed(self, key: str, value: bytes | None, partition: int = 0) -> None:
        """Apply one record of changelog ``partition`` (``value`` None: a tombstone)."""
        try:
            profile = Profile.from_bytes(value) if value is not None else None
        except ProfileDecodeError:
            return
        if profile is not None and (
            key == self._key or (self._email and profile.fields.get("email") == self._email)
        ):
            self._held.pop((key, partition), None)  # the latest fed last
            self._held[(key, partition)] = profile
        else:
            self._held.pop((key, partition), None)


class ProfileStore(Protocol):
    """Profiles by user key (record key, else userId, else anonymousId).

    Called by the mapper on its thread for every routed event: ``get`` then, when something
    changed, ``put``. Implementations must not block for long (the durable one keeps a local
    cache and writes the changelog asynchronously).
    """

    def get(self, key: str) -> Profile | None: ...

    def put(self, key: str, profile: Profile) -> None: ...

    def consent_holds(self, key: str, decisions: Mapping[str, bool]) -> bool:
        """True when ``key``'s stored consent already has every one of ``decisions`` (so
        remembering them would change nothing). The mapper asks this for every analytics
        event that carries consent: it must be cheaper than ``get``."""
        ...


class InMemoryProfileStore:
    """A ``ProfileStore`` in a dict, bounded: past ``max_entries`` the least recently used
    profile is forgotten (that user's next event starts from what it carries).

    Profiles are held encoded (``to_bytes``, about 150 bytes each instead of about 750 as
    objects: 100,000 users cost 15 MB, not 75) and decoded on ``get`` (``from_own_bytes``,
    about 1 us). A cache of decoded profiles was tried and measured slower: the objects it
    keeps alive survive into the garbage collector's older generations and make every
    collection longer (``bench/bench_mapping.py``)."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._profiles: OrderedDict[str, bytes] = OrderedDict()
        self._max_entries = max_entries
        self.evicted = 0  # for a metric

    def __len__(self) -> int:
        return len(self._profiles)

    def get(self, key: str) -> Profile | None:
        data = self._profiles.get(key)
        if data is None:
            return None
        self._profiles.move_to_end(key)
        return Profile.from_own_bytes(data)

    def put(self, key: str, profile: Profile) -> None:
        self._store(key, profile.to_bytes())

    def consent_holds(self, key: str, decisions: Mapping[str, bool]) -> bool:
        data = self._profiles.get(key)
        if data is None:
            return not decisions
        self._profiles.move_to_end(key)
        if data.endswith(consent_suffix(decisions)):
            return True  # the stored consent is exactly ``decisions``: no decode needed
        consent = Profile.from_own_bytes(data).consent
        return all(consent.get(category) == granted for category, granted in decisions.items())

    def _store(self, key: str, data: bytes) -> None:
        # A copy: orjson's output keeps its whole working buffer (about 4 KB) allocated for as
        # long as the bytes live, which costs 400 MB for 100,000 stored profiles.
        self._profiles[key] = memoryview(data).tobytes()
        self._profiles.move_to_end(key)
        if len(self._profiles) > self._max_entries:
            self._profiles.popitem(last=False)
            self.evicted += 1


class ChangelogProfileStore(InMemoryProfileStore):
    """The engine's store: in memory, with every change also written to a compacted Kafka topic
    (the changelog, keyed by user key) so profiles survive restarts and rebalances.

    Contract with the engine, which owns the Kafka side:

    - ``put`` records a changed profile (an unchanged one records nothing) as an unsent write
      and counts it in ``changes``; changes to one key before the next ``take_writes`` coalesce
      into one write (the latest profile). After mapping a poll batch the engine calls
      ``take_writes`` and produces the writes, and the offsets of the records that changed a
      profile (``changes`` moved while mapping them) complete only once the broker confirmed
      them (``written``, once per write), so a committed offset never refers to a profile
      change that could be lost.
    - ``restore`` applies a changelog record read back from Kafka (at start-up and when
      partitions are assigned). A key with a write of ours still unconfirmed is skipped: memory
      holds a newer profile than the log can.

    Pure: no I/O. Event-loop thread only.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        super().__init__(max_entries)
        self._unsent: dict[str, bytes] = {}
        self._unconfirmed: dict[str, int] = {}  # key -> writes unsent or unconfirmed
        self.changes = 0

    def put(self, key: str, profile: Profile) -> None:
        data = profile.to_bytes()
        if self._profiles.get(key) == data:
            self._profiles.move_to_end(key)
            return
        self._store(key, data)
        self.changes += 1
        if key not in self._unsent:
            self._unconfirmed[key] = self._unconfirmed.get(key, 0) + 1
        self._unsent[key] = data

    def take_writes(self) -> list[tuple[str, bytes]]:
        """The changes recorded since the last call as (key, value) records: one per key, its
        latest profile, in the order the keys first changed."""
        writes, self._unsent = list(self._unsent.items()), {}
        return writes

    def written(self, key: str) -> None:
        """The broker confirmed one write of ``key`` (from ``take_writes``)."""
        left = self._unconfirmed.get(key, 0) - 1
        if left > 0:
            self._unconfirmed[key] = left
        else:
            self._unconfirmed.pop(key, None)

    def forget(self, key: str) -> bool:
        """Erase ``key``'s profile from memory (a tombstone written by ``ghl-consumer forget``),
        even with a write of ours unconfirmed: erasure wins. Returns whether one was held."""
        return self._profiles.pop(key, None) is not None

    def restore(self, key: str, value: bytes | None) -> bool:
        """Apply one changelog record (None: a tombstone). Returns False when skipped (a write
        of ours for the key is unconfirmed). Raises ProfileDecodeError for bytes that are not a
        profile; the caller logs and goes on."""
        if key in self._unconfirmed:
            return False
        if value is None:
            self._profiles.pop(key, None)
            return True
        self._store(key, Profile.from_bytes(value).to_bytes())  # validated, canonical bytes
        return True
