"""The settings tree ``load_settings`` returns (``consumer.config.loader``): frozen values, one
class per section of the TOML file, and ``Secret`` for what must never be printed.

Plain sections (every field with a default and a simple type: int, float, str, bool) are listed
in ``PLAIN_SECTIONS``; the loader reads, bounds-checks and names them generically. To add such a
setting, add a field; ``metadata={"min": n}`` adds a lower bound, ``{"at_most": "other"}`` /
``{"at_least": "other"}`` a bound by another field of the same section, ``{"env_only": True}``
keeps it out of the file.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from consumer.core.decode import Limits
from consumer.core.mapping import MappingOptions
from consumer.core.targets import Target
from consumer.errors import ConfigError


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A secret string. ``repr``/``str`` print ``***``; ``reveal()`` returns the value.

    ``Secret.unread()`` stands for a secret that was deliberately not read (the dry run needs no
    tokens); revealing it raises ConfigError.
    """

    _value: str | None
    source: str  # where it comes from, e.g. "environment variable GHL_ACCESS_TOKEN"; not secret
    file: str | None = None  # the file it was read from ({ file = ... }), to read it anew

    @classmethod
    def unread(cls, source: str) -> Secret:
        return cls(None, source)

    def reveal(self) -> str:
        if self._value is None:
            raise ConfigError(f"secret from {self.source} was not read")
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class Integration:
    """One HighLevel sub-account (location), or with ``oauth`` the locations of an OAuth
    installation: how events map onto their contacts (``target``, what the core reads, without
    the token) and what reaches them: a private integration token (``access_token``), or the
    ``[[oauth]]`` table with this id (``oauth``; ``access_token`` is then None). Exactly one of
    the two is set."""

    target: Target
    access_token: Secret | None
    oauth: str | None = None

    @property
    def id(self) -> str:
        return self.target.id

    @property
    def location_id(self) -> str:
        return self.target.location_id


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthApp:
    """A Marketplace app installed in a company (agency), from an ``[[oauth]]`` table: how to
    reach its locations with OAuth tokens (``consumer.state.oauth_tokens``). ``locations`` are
    the ones listed; with ``discover`` the installation's are asked for instead."""

    id: str
    client_id: str
    client_secret: Secret
    app_id: str
    company_id: str
    locations: tuple[str, ...] = ()
    discover: bool = False
    discover_seconds: float = 300.0
    """How often ``run`` asks ``/oauth/installedLocations`` again (with ``discover``)."""
    auto_reconnect: bool = True
    """Whether ``run`` recovers a lost refresh token itself (``POST /oauth/reconnect``);
    false: the installation stays broken until ``ghl-consumer oauth reconnect``."""
    reconnect_interval_seconds: float = 600.0
    """The least time between two automatic reconnects: a token lost again sooner marks the
    installation broken (a person must look)."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    topics: tuple[str, ...] = ("events",)
    group_id: str = "ghl-consumer"
    auto_offset_reset: str = "earliest"
    group_protocol: str = "classic"  # classic (cooperative-sticky) | consumer (KIP-848)
    dead_letter_topic: str = ""  # empty: "<group_id>.dead-letter"
    profile_topic: str = ""  # compacted changelog of profiles; empty: "<group_id>.profiles"
    parking_topic: str = ""  # parked upserts; empty: "<group_id>.parking" (its group: the same)
    erasure_topic: str = ""  # `ghl-consumer forget` records; empty: "<group_id>.erasures"
    # one record per HighLevel call, for `ghl-consumer trace`; empty: "<group_id>.deliveries"
    delivery_topic: str = ""
    # `ghl-consumer dlq replay` copies; `run` reads it in a group of its own (named after the
    # topic, as parking's), routing each copy as its `ghl.original_topic` header says (one of
    # `topics`); empty: "<group_id>.replay"
    replay_topic: str = ""
    # identity stitching across partitions (with `[profiles] state_dir` only): requests and
    # merges of profiles, co-partitioned with `topics`, read by the engine as it owns the event
    # partitions (committing in a group named after the topic); empty: "<group_id>.stitch"
    stitch_topic: str = ""
    # retention.ms given to the dead-letter and parking topics when the consumer creates them
    # (the replay topic gets the dead-letter one): they hold raw events (personal data).
    # Default 14 days.
    dead_letter_retention_ms: int = 14 * 86_400_000
    parking_retention_ms: int = 14 * 86_400_000
    # retention.ms of the delivery topic when the consumer creates it (no personal data; how
    # far back `trace` can name the HighLevel call). Default 7 days.
    delivery_retention_ms: int = 7 * 86_400_000
    # classic protocol only (KIP-848 sets it broker-side): how long a silent member keeps its
    # partitions. None: librdkafka's default (45 s).
    session_timeout_ms: int | None = None
    # static membership (KIP-345) of the event feed's member: the same id after a restart gets
    # the same partitions back without a rebalance, if it returns within the session timeout
    # (a StatefulSet's pod name: warm restarts of the partitioned profile state). A member with
    # an id that stops is not replaced before the session timeout. Empty: dynamic membership.
    group_instance_id: str = ""
    # true: `run` creates its dead-letter, parking and profile topics when missing (CreateTopics,
    # needs Create on the cluster). false: topics are made by an administrator (managed Kafka);
    # `run` checks that every topic exists and that its ACLs allow what it does there.
    create_topics: bool = True
    # How long `run` waits at start-up for a bootstrap server to answer before it exits (status
    # 1); 0: wait for ever.
    startup_timeout_seconds: int = 60
    # extra librdkafka settings (security.protocol, sasl.*, ...), passed through as given
    librdkafka: Mapping[str, str | Secret] = field(default_factory=lambda: MappingProxyType({}))

    def extra_settings(self) -> dict[str, str]:
        """The ``[kafka.librdkafka]`` pass-through settings, secrets revealed: hand them to the
        Kafka clients, never log them."""
        return {
            key: value.reveal() if isinstance(value, Secret) else value
            for key, value in self.librdkafka.items()
        }


@dataclass(frozen=True, slots=True)
class HighLevelSettings:
    api_base_url: str = "https://services.leadconnectorhq.com"
    # http:// to a host other than loopback sends the bearer tokens in clear: refused unless set
    allow_insecure_http: bool = False


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int = field(default=9464, metadata={"min": 0})
    host: str = "127.0.0.1"  # /metrics, /healthz, /readyz only: the debugger has its own
    stall_seconds: float = field(default=300.0, metadata={"min": 1})
    debugger_capacity: int = field(default=200, metadata={"min": 1})


@dataclass(frozen=True, slots=True)
class DebugSettings:
    """``[debug]``: the Event Debugger's own listener. The loader refuses a ``host`` that is not
    loopback without ``access_token``."""

    host: str = "127.0.0.1"
    port: int = field(default=9465, metadata={"min": 0})
    # Host header values answered besides the loopback names and ``host`` (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    max_streams: int = field(default=8, metadata={"min": 1})  # live (SSE) pages at once
    session_seconds: int = field(default=900, metadata={"min": 60})  # the login cookie's life
    show_personal_data: bool = False  # names, addresses, custom values, ids shown in clear
    # From the environment only (DEBUG_ACCESS_TOKEN), never the file.
    access_token: Secret | None = field(default=None, metadata={"env_only": True})


AES_KEY_BYTES: Final = 32


def aes_key(text: str) -> bytes:
    """An AES-256 key given as base64 (``openssl rand -base64 32``): its 32 bytes. Raises
    ValueError naming the length found, never the text."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 (create one with: openssl rand -base64 32)") from None
    if len(key) != AES_KEY_BYTES:
        raise ValueError(
            f"{len(key)} bytes, AES-256 needs {AES_KEY_BYTES} (openssl rand -base64 32)"
        )
    return key


@dataclass(frozen=True, slots=True)
class ProfileKey:
    """One ``[profiles] encryption_keys`` entry: the id recorded in every value it seals."""

    id: str
    key: Secret  # base64 of 32 bytes; checked by the loader when read


@dataclass(frozen=True, slots=True)
class ProfilesSettings:
    """``[profiles]``: encryption at rest of the profile changelog's values. ``encryption_keys``
    are every key a value may be sealed with; ``encryption_key_id`` the one new values use (empty:
    values are written plain, sealed ones still read).

    ``state_dir``: empty keeps every profile in memory and reads the whole changelog on every
    assignment; set, each member keeps only the profiles of the event partitions it owns, on
    disk under this directory (partitioned state: one input topic, the changelog with its
    partition count), with at most ``cache_entries`` of them in memory."""

    encryption_keys: tuple[ProfileKey, ...] = ()
    encryption_key_id: str = ""
    state_dir: str = ""
    cache_entries: int = 100_000

    def keys(self) -> dict[str, bytes]:
        """Key id -> key bytes, revealed: hand them to the cipher, never log them."""
        return {k.id: aes_key(k.key.reveal()) for k in self.encryption_keys}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = ""  # empty = no Redis (single instance, local rate limiter)


@dataclass(frozen=True, slots=True)
class MappingSettings:
    dedupe_max_entries: int = field(default=100_000, metadata={"min": 1})
    dedupe_ttl_seconds: float = field(default=86_400.0, metadata={"min": 1})
    phone_cache_size: int = field(default=65_536, metadata={"min": 1})
    profile_max_entries: int = field(default=1_000_000, metadata={"min": 1})
    # how often a running member reads the profile changelog for `ghl-consumer forget` erasures
    erasure_check_seconds: float = field(default=10.0, metadata={"min": 0.1})
    max_event_bytes: int = field(default=1_048_576, metadata={"min": 64})
    max_field_chars: int = field(default=1_024, metadata={"min": 16})

    def options(self) -> MappingOptions:
        """This section as the core's mapper options."""
        return MappingOptions(
            limits=Limits(
                max_event_bytes=self.max_event_bytes, max_field_chars=self.max_field_chars
            ),
            phone_cache_size=self.phone_cache_size,
            dedupe_max_entries=self.dedupe_max_entries,
            dedupe_ttl_seconds=self.dedupe_ttl_seconds,
            profile_max_entries=self.profile_max_entries,
        )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    coalesce_window_ms: int = field(default=250, metadata={"min": 0})
    max_in_flight: int = field(default=64, metadata={"min": 1})
    max_buffered: int = field(default=20_000, metadata={"min": 10})
    max_buffered_per_partition: int = field(default=5_000, metadata={"min": 10})
    # bytes of waiting records (keys, values, headers) before every partition pauses
    max_buffered_bytes: int = field(default=16 * 1024 * 1024, metadata={"min": 1_048_576})
    commit_interval_ms: int = field(default=1_000, metadata={"min": 10})
    drain_timeout_seconds: float = field(default=10.0, metadata={"min": 0})
    progress_interval_seconds: float = field(default=10.0, metadata={"min": 0.1})


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    timeout_seconds: float = field(default=10.0, metadata={"min": 0.1})
    # Per-location budget: at most rate_burst requests per rate_interval_seconds (HighLevel's
    # window), paced at rate_sustained per interval, and rate_daily per day.
    rate_burst: int = field(default=100, metadata={"min": 1})
    rate_interval_seconds: float = field(default=10.0, metadata={"min": 0.001})
    rate_sustained: int = field(default=80, metadata={"min": 1, "at_most": "rate_burst"})
    rate_daily: int = field(default=200_000, metadata={"min": 1})
    # Daily budget spent: one probe request this often, in case HighLevel's day turns earlier.
    rate_daily_recheck_seconds: float = field(default=900.0, metadata={"min": 0.01})
    retry_base_seconds: float = field(default=0.5, metadata={"min": 0.001})
    retry_max_seconds: float = field(
        default=30.0, metadata={"min": 0.001, "at_least": "retry_base_seconds"}
    )
    unauthorized_probe_seconds: float = field(default=30.0, metadata={"min": 0.01})
    # a contact failing (5xx, timeouts) this long is parked so its partition moves on
    max_retry_seconds: float = field(default=300.0, metadata={"min": 0.01})
    # With REDIS_URL: each instance's share of the budget while Redis is unreachable.
    redis_expected_instances: int = field(default=3, metadata={"min": 1})


@dataclass(frozen=True, slots=True)
class Settings:
    integrations: tuple[Integration, ...]
    kafka: KafkaSettings = KafkaSettings()
    highlevel: HighLevelSettings = HighLevelSettings()
    metrics: MetricsSettings = MetricsSettings()
    debug: DebugSettings = DebugSettings()
    profiles: ProfilesSettings = ProfilesSettings()
    redis: RedisSettings = RedisSettings()
    mapping: MappingSettings = MappingSettings()
    engine: EngineSettings = EngineSettings()
    delivery: DeliverySettings = DeliverySettings()
    oauth: tuple[OAuthApp, ...] = ()
    config_path: str | None = None

    def targets(self) -> tuple[Target, ...]:
        """The integrations as the core's routing and mapping targets (no tokens)."""
        return tuple(integration.target for integration in self.integrations)

    @property
    def partitioned_profiles(self) -> bool:
        """Whether profile state is partitioned (``profiles.state_dir`` set, which the loader
        accepts with one topic in ``kafka.topics`` only). Then the profile changelog, the
        replay topic and the stitch topic are co-partitioned with the source topic: each has
        its partition count, ``dlq replay`` writes each copy to its original's partition, and
        each member reads the replay and stitch partitions of the source partitions it owns.
        Otherwise the replay topic is read by a consumer group of its own and there is no
        stitch topic."""
        return bool(self.profiles.state_dir)


PROFILES_CO_PARTITIONED: Final = (
    "profiles.state_dir is set: a profile lives in the changelog partition of its events' "
    "partition"
)
REPLAY_CO_PARTITIONED: Final = (
    "profiles.state_dir is set: each member reads the replay partitions of the source "
    "partitions it owns, and dlq replay writes each copy to its original's partition"
)
"""Why the replay topic must have the source topic's partition count, for error messages."""
STITCH_CO_PARTITIONED: Final = (
    "profiles.state_dir is set: a stitch request or merge goes to the partition of the "
    "profile it is for, read by the member owning that source partition"
)


PLAIN_SECTIONS: Final[dict[str, type]] = {
    "highlevel": HighLevelSettings,
    "metrics": MetricsSettings,
    "redis": RedisSettings,
    "mapping": MappingSettings,
    "engine": EngineSettings,
    "delivery": DeliverySettings,
}
"""Section name in the file -> its class, for the sections the loader handles generically."""
