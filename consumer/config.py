"""Settings: the one reader of configuration files and the environment.

``load_settings(path, environ)`` reads an optional TOML file, applies the environment
overrides below (``docs/architecture.md``, "Configuration"), validates everything and returns
a frozen ``Settings`` tree, or raises ``ConfigError`` whose message names the field
(``integrations[1].location_id: required``, ``KAFKA_TOPICS: ...``). Tokens are ``Secret``
values: masked in repr/str, the raw value only through ``Secret.reveal()``; error messages name
where a secret comes from, never its value.

Environment, overriding the file:
``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_TOPICS`` (comma list), ``KAFKA_GROUP_ID``,
``KAFKA_AUTO_OFFSET_RESET``, ``GHL_API_BASE_URL``, ``METRICS_PORT``, ``REDIS_URL``; and for the
integration with id ``default``: ``GHL_LOCATION_ID``, ``GHL_ACCESS_TOKEN``,
``GHL_CONSENT_CATEGORY``, ``GHL_DEFAULT_PHONE_REGION``. With no ``[[integrations]]`` in the file
(or no file) and ``GHL_LOCATION_ID`` + ``GHL_ACCESS_TOKEN`` set, one integration ``default``
receives every event. When the file defines integrations but none has id ``default``, setting a
``GHL_*`` integration variable is an error rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from consumer.core.decode import Limits
from consumer.core.events import REMOVABLE_FIELDS, PresetEvent, TagMode
from consumer.core.normalise import PHONE_REGIONS
from consumer.errors import ConfigError

DEFAULT_INTEGRATION: Final = "default"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_OFFSET_RESETS: Final = frozenset(("earliest", "latest", "error"))
# librdkafka keys this file sets from typed settings; the passthrough table may not repeat them.
_OWNED_KAFKA_KEYS: Final = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "group.id": "kafka.group_id",
    "auto.offset.reset": "kafka.auto_offset_reset",
    "group.protocol": "kafka.group_protocol",
}
# librdkafka properties whose value is secret (its own "sensitive" ones: sasl.password,
# ssl.key.password, ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.config,
# sasl.oauthbearer.client.secret, ...): kept as Secret even when given literally.
_SENSITIVE_KEY = re.compile(
    r"password|passphrase|secret|token|credential|private|key\.pem|oauthbearer\.config",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A secret string. ``repr``/``str`` print ``***``; ``reveal()`` returns the value.

    ``Secret.unread()`` stands for a secret that was deliberately not read (the dry run needs no
    tokens); revealing it raises ConfigError.
    """

    _value: str | None
    source: str  # where it comes from, e.g. "environment variable GHL_ACCESS_TOKEN"; not secret

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
class Routing:
    """Which events an integration receives. ``topics`` empty = every topic; ``field`` (a path
    into the event) set = only events whose value there is a string in ``values``. Both set =
    both must match."""

    topics: frozenset[str] = frozenset()
    field: tuple[str, ...] | None = None
    values: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CustomFieldMapping:
    """``customFields`` entry: HighLevel field id <- value at ``source`` (a path in the event)."""

    field_id: str
    source: tuple[str, ...]

    @property
    def source_text(self) -> str:
        return ".".join(self.source)


@dataclass(frozen=True, slots=True)
class Integration:
    """One HighLevel sub-account (location) and how events map onto its contacts."""

    id: str
    location_id: str
    access_token: Secret
    consent_category: str = "marketing"
    default_phone_region: str | None = None
    tag_mode: TagMode = TagMode.UPSERT
    removed_fields: frozenset[str] = frozenset()
    custom_fields: tuple[CustomFieldMapping, ...] = ()
    aliases: Mapping[str, PresetEvent] = field(default_factory=lambda: MappingProxyType({}))
    routing: Routing = Routing()


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
    # classic protocol only (KIP-848 sets it broker-side): how long a silent member keeps its
    # partitions. None: librdkafka's default (45 s).
    session_timeout_ms: int | None = None
    # extra librdkafka settings (security.protocol, sasl.*, ...), passed through as given
    librdkafka: Mapping[str, str | Secret] = field(default_factory=lambda: MappingProxyType({}))

    def extra_settings(self) -> dict[str, str]:
        """The ``[kafka.librdkafka]`` pass-through settings, secrets revealed: hand them to the
        Kafka clients, never log them."""
        return {
            key: value.reveal() if isinstance(value, Secret) else value
            for key, value in self.librdkafka.items()
        }


# Plain sections: every field has a default and a simple type (int, float, str, bool). To add
# a setting, add a field; ``metadata={"min": n}`` adds a lower bound, ``{"at_most": "other"}``
# / ``{"at_least": "other"}`` a bound by another field of the same section.


@dataclass(frozen=True, slots=True)
class HighLevelSettings:
    api_base_url: str = "https://services.leadconnectorhq.com"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int = field(default=9464, metadata={"min": 0})
    host: str = "127.0.0.1"  # the debugger shows (masked) contact data: local-only by default
    stall_seconds: float = field(default=300.0, metadata={"min": 1})
    debugger_capacity: int = field(default=200, metadata={"min": 1})
    # Guards /debug when set; from the environment only (DEBUG_ACCESS_TOKEN), never the file.
    debug_token: Secret | None = field(default=None, metadata={"env_only": True})


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = ""  # empty = no Redis (single instance, local rate limiter)


@dataclass(frozen=True, slots=True)
class MappingSettings:
    dedupe_max_entries: int = field(default=100_000, metadata={"min": 1})
    dedupe_ttl_seconds: float = field(default=86_400.0, metadata={"min": 1})
    phone_cache_size: int = field(default=65_536, metadata={"min": 1})
    profile_max_entries: int = field(default=1_000_000, metadata={"min": 1})
    max_event_bytes: int = field(default=1_048_576, metadata={"min": 64})
    max_field_chars: int = field(default=1_024, metadata={"min": 16})

    def limits(self) -> Limits:
        return Limits(max_event_bytes=self.max_event_bytes, max_field_chars=self.max_field_chars)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    coalesce_window_ms: int = field(default=250, metadata={"min": 0})
    max_in_flight: int = field(default=64, metadata={"min": 1})
    max_buffered: int = field(default=20_000, metadata={"min": 10})
    max_buffered_per_partition: int = field(default=5_000, metadata={"min": 10})
    # bytes of waiting records (keys, values, headers) before every partition pauses
    max_buffered_bytes: int = field(default=64 * 1024 * 1024, metadata={"min": 1_048_576})
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
    redis: RedisSettings = RedisSettings()
    mapping: MappingSettings = MappingSettings()
    engine: EngineSettings = EngineSettings()
    delivery: DeliverySettings = DeliverySettings()
    config_path: str | None = None


_SECTIONS: Final[dict[str, type]] = {
    "highlevel": HighLevelSettings,
    "metrics": MetricsSettings,
    "redis": RedisSettings,
    "mapping": MappingSettings,
    "engine": EngineSettings,
    "delivery": DeliverySettings,
}
_TOP_LEVEL: Final = frozenset((*_SECTIONS, "kafka", "integrations"))


def load_settings(
    path: str | None,
    environ: Mapping[str, str],
    *,
    read_secrets: bool = True,
    kafka_secrets: bool | None = None,
) -> Settings:
    """Read ``path`` (TOML; None = no file) and ``environ``; validate; return Settings.

    ``read_secrets=False`` validates where secrets come from but does not read them (tokens
    become ``Secret.unread``): for commands that send nothing to HighLevel. ``kafka_secrets``
    (default: ``read_secrets``) decides the same for the ``[kafka.librdkafka]`` secrets: the
    operator commands that read Kafka without HighLevel tokens (dlq, audit) pass True, the dry
    run reads neither. Raises ConfigError.
    """
    doc: dict[str, Any] = _read_toml(path) if path is not None else {}
    for key in doc:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(_TOP_LEVEL))})")
    sections: dict[str, Any] = {
        name: _plain_section(cls, _table(doc, name, name), name) for name, cls in _SECTIONS.items()
    }
    sections["highlevel"] = _env_highlevel(sections["highlevel"], environ)
    sections["metrics"] = _env_metrics(sections["metrics"], environ)
    sections["redis"] = _env_redis(sections["redis"], environ)
    kafka = _kafka(
        _table(doc, "kafka", "kafka"),
        environ,
        read_secrets if kafka_secrets is None else kafka_secrets,
    )
    integrations = _integrations(doc.get("integrations"), environ, read_secrets)
    return Settings(integrations=integrations, kafka=kafka, config_path=path, **sections)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def _table(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _unknown_keys(table: Mapping[str, Any], known: typing.Iterable[str], where: str) -> None:
    known = set(known)
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(known))})")


def _plain_section(cls: type, table: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("env_only")}
    _unknown_keys(table, fields, where)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in table.items():
        values[name] = _simple_value(hints[name], value, fields[name].metadata, f"{where}.{name}")
    section = cls(**values)
    for name, spec in fields.items():
        value = getattr(section, name)
        if (other := spec.metadata.get("at_most")) and value > getattr(section, other):
            raise ConfigError(
                f"{where}.{name}: must be at most {where}.{other} ({getattr(section, other)})"
            )
        if (other := spec.metadata.get("at_least")) and value < getattr(section, other):
            raise ConfigError(
                f"{where}.{name}: must be at least {where}.{other} ({getattr(section, other)})"
            )
    return section


def _simple_value(kind: type, value: object, metadata: Mapping[str, Any], where: str) -> object:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    # int or float: bools are ints in Python, not numbers in TOML
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer")
    minimum = metadata.get("min")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}")
    return float(value) if kind is float else value


def _env_highlevel(section: HighLevelSettings, environ: Mapping[str, str]) -> HighLevelSettings:
    url = environ.get("GHL_API_BASE_URL", section.api_base_url)
    where = "GHL_API_BASE_URL" if "GHL_API_BASE_URL" in environ else "highlevel.api_base_url"
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: expected an http(s):// URL")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        # the URL is logged and shown; credentials belong in the integration's token
        raise ConfigError(f"{where}: must not carry user:password@ (the token authenticates)")
    return HighLevelSettings(api_base_url=url.rstrip("/"))


_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def _env_redis(section: RedisSettings, environ: Mapping[str, str]) -> RedisSettings:
    url = environ.get("REDIS_URL", section.url).strip()
    where = "REDIS_URL" if "REDIS_URL" in environ else "redis.url"
    if url and not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(f"{where}: expected a {', '.join(_REDIS_SCHEMES)} URL, or empty")
    return RedisSettings(url=url)


def _env_metrics(section: MetricsSettings, environ: Mapping[str, str]) -> MetricsSettings:
    port = section.port
    if "METRICS_PORT" in environ:
        text = environ["METRICS_PORT"].strip()
        if not text.isdigit():
            raise ConfigError("METRICS_PORT: expected a port number")
        port = int(text)
    if port > 65535:
        where = "METRICS_PORT" if "METRICS_PORT" in environ else "metrics.port"
        raise ConfigError(f"{where}: must be at most 65535")
    host = environ.get("METRICS_HOST", section.host).strip()
    if not host:
        where = "METRICS_HOST" if "METRICS_HOST" in environ else "metrics.host"
        raise ConfigError(f"{where}: must not be empty")
    token = environ.get("DEBUG_ACCESS_TOKEN", "")
    return dataclasses.replace(
        section,
        port=port,
        host=host,
        debug_token=Secret(token, "environment variable DEBUG_ACCESS_TOKEN") if token else None,
    )


def _kafka(table: dict[str, Any], environ: Mapping[str, str], read_secrets: bool) -> KafkaSettings:
    defaults = KafkaSettings()
    _unknown_keys(
        table,
        (
            "bootstrap_servers",
            "topics",
            "group_id",
            "auto_offset_reset",
            "group_protocol",
            "dead_letter_topic",
            "profile_topic",
            "parking_topic",
            "session_timeout_ms",
            "librdkafka",
        ),
        "kafka",
    )

    def text(key: str, env: str, default: str) -> tuple[str, str]:
        if env in environ:
            value, where = environ[env].strip(), env
        else:
            raw, where = table.get(key, default), f"kafka.{key}"
            if not isinstance(raw, str):
                raise ConfigError(f"{where}: expected a string")
            value = raw.strip()
        if not value:
            raise ConfigError(f"{where}: must not be empty")
        return value, where

    servers, _ = text("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", defaults.bootstrap_servers)
    group, _ = text("group_id", "KAFKA_GROUP_ID", defaults.group_id)
    reset, reset_where = text("auto_offset_reset", "KAFKA_AUTO_OFFSET_RESET", "earliest")
    if reset not in _OFFSET_RESETS:
        raise ConfigError(f"{reset_where}: expected one of {', '.join(sorted(_OFFSET_RESETS))}")
    protocol, protocol_where = text("group_protocol", "KAFKA_GROUP_PROTOCOL", "classic")
    if protocol not in ("classic", "consumer"):
        raise ConfigError(f"{protocol_where}: expected classic or consumer")
    dead_letter, _ = text("dead_letter_topic", "KAFKA_DEAD_LETTER_TOPIC", f"{group}.dead-letter")
    profiles, _ = text("profile_topic", "KAFKA_PROFILE_TOPIC", f"{group}.profiles")
    parking, _ = text("parking_topic", "KAFKA_PARKING_TOPIC", f"{group}.parking")
    session_timeout = _session_timeout(table, environ, protocol)

    if "KAFKA_TOPICS" in environ:
        topics = [t.strip() for t in environ["KAFKA_TOPICS"].split(",") if t.strip()]
        topics_where = "KAFKA_TOPICS"
    else:
        topics = _string_list(table.get("topics", list(defaults.topics)), "kafka.topics")
        topics_where = "kafka.topics"
    if not topics:
        raise ConfigError(f"{topics_where}: at least one topic is required")

    passthrough: dict[str, str | Secret] = {}
    for key, value in _table(table, "librdkafka", "kafka.librdkafka").items():
        where = f"kafka.librdkafka.{key}"
        if key in _OWNED_KAFKA_KEYS:
            raise ConfigError(f"{where}: set {_OWNED_KAFKA_KEYS[key]} instead")
        if isinstance(value, dict):
            passthrough[key] = _secret(value, where, environ, read_secrets)
        elif isinstance(value, bool):
            passthrough[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text_value = str(value)
            passthrough[key] = (
                Secret(text_value, where) if _SENSITIVE_KEY.search(key) else text_value
            )
        else:
            raise ConfigError(f"{where}: expected a string, number, boolean or {{ env = ... }}")
    return KafkaSettings(
        bootstrap_servers=servers,
        topics=tuple(dict.fromkeys(topics)),
        group_id=group,
        auto_offset_reset=reset,
        group_protocol=protocol,
        dead_letter_topic=dead_letter,
        profile_topic=profiles,
        parking_topic=parking,
        session_timeout_ms=session_timeout,
        librdkafka=MappingProxyType(passthrough),
    )


def _session_timeout(
    table: Mapping[str, Any], environ: Mapping[str, str], protocol: str
) -> int | None:
    if "KAFKA_SESSION_TIMEOUT_MS" in environ:
        where, raw = "KAFKA_SESSION_TIMEOUT_MS", environ["KAFKA_SESSION_TIMEOUT_MS"].strip()
        if not raw.isdigit():
            raise ConfigError(f"{where}: expected a number of milliseconds")
        value: object = int(raw)
    elif "session_timeout_ms" in table:
        where, value = "kafka.session_timeout_ms", table["session_timeout_ms"]
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1000:
        raise ConfigError(f"{where}: expected milliseconds, at least 1000")
    if protocol == "consumer":
        raise ConfigError(
            f"{where}: with group_protocol consumer (KIP-848) the broker sets the session "
            "timeout (group.consumer.session.timeout.ms)"
        )
    return value


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings")
    return [v.strip() for v in value]


def _secret(spec: object, where: str, environ: Mapping[str, str], read: bool) -> Secret:
    """``{ env = "NAME" }`` or ``{ file = "PATH" }``; literal strings are refused for tokens so
    they do not end up in version control."""
    if isinstance(spec, str):
        raise ConfigError(
            f'{where}: give {{ env = "NAME" }} or {{ file = "PATH" }}, not the secret itself'
        )
    if not isinstance(spec, dict) or len(spec) != 1 or not ({"env", "file"} & set(spec)):
        raise ConfigError(f'{where}: expected {{ env = "NAME" }} or {{ file = "PATH" }}')
    kind, name = next(iter(spec.items()))
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{kind}: expected a non-empty string")
    source = f"environment variable {name}" if kind == "env" else f"file {name}"
    if not read:
        return Secret.unread(source)
    if kind == "env":
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{where}: environment variable {name} is not set")
    else:
        try:
            value = Path(name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{where}: cannot read file {name}: {reason}") from None
        if not value:
            raise ConfigError(f"{where}: file {name} is empty")
    return Secret(value, source)


def _path(text: object, where: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a dotted path such as properties.plan")
    steps = tuple(text.strip().split("."))
    if not all(steps):
        raise ConfigError(f"{where}: {text!r} is not a dotted path such as properties.plan")
    return steps


_INTEGRATION_KEYS: Final = (
    "id",
    "location_id",
    "access_token",
    "consent_category",
    "default_phone_region",
    "tag_mode",
    "routing",
    "events",
    "fields",
)
_GHL_ENV: Final = (
    "GHL_LOCATION_ID",
    "GHL_ACCESS_TOKEN",
    "GHL_CONSENT_CATEGORY",
    "GHL_DEFAULT_PHONE_REGION",
)


def _integrations(
    value: object, environ: Mapping[str, str], read_secrets: bool
) -> tuple[Integration, ...]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ConfigError("integrations: expected [[integrations]] tables")
    env_set = [name for name in _GHL_ENV if name in environ]
    tables = list(value)
    if not tables:
        if "GHL_LOCATION_ID" not in environ:
            if "GHL_ACCESS_TOKEN" in environ:
                raise ConfigError("GHL_LOCATION_ID: required when GHL_ACCESS_TOKEN is set")
            raise ConfigError(
                "integrations: none configured; set GHL_LOCATION_ID and GHL_ACCESS_TOKEN, "
                "or add [[integrations]] to the config file"
            )
        if "GHL_ACCESS_TOKEN" not in environ and read_secrets:
            raise ConfigError("GHL_ACCESS_TOKEN: required when GHL_LOCATION_ID is set")
        # Without GHL_ACCESS_TOKEN (dry run only) the token is left unread.
        tables = [{"id": DEFAULT_INTEGRATION, "access_token": {"env": "GHL_ACCESS_TOKEN"}}]
    elif env_set and not any(
        isinstance(t, dict) and t.get("id") == DEFAULT_INTEGRATION for t in tables
    ):
        raise ConfigError(
            f"{env_set[0]}: set, but the config file defines integrations and none has "
            f'id "{DEFAULT_INTEGRATION}" for it to apply to'
        )
    result: list[Integration] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"integrations[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        integration = _integration(table, where, environ, read_secrets)
        if integration.id in first_index:
            raise ConfigError(
                f"{where}.id: duplicate id {integration.id!r} "
                f"(also integrations[{first_index[integration.id]}])"
            )
        first_index[integration.id] = index
        result.append(integration)
    return tuple(result)


def _integration(
    table: dict[str, Any], where: str, environ: Mapping[str, str], read_secrets: bool
) -> Integration:
    _unknown_keys(table, _INTEGRATION_KEYS, where)
    ident = table.get("id")
    if ident is None:
        raise ConfigError(f"{where}.id: required")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise ConfigError(f"{where}.id: expected letters, digits, '_', '.', '-' (at most 64)")
    env = environ if ident == DEFAULT_INTEGRATION else {}

    def setting(key: str, env_name: str) -> tuple[object, str]:
        if env_name in env:
            return env[env_name].strip(), env_name
        return table.get(key), f"{where}.{key}"

    location, location_where = setting("location_id", "GHL_LOCATION_ID")
    if location is None or location == "":
        raise ConfigError(f"{location_where}: required")
    if not isinstance(location, str):
        raise ConfigError(f"{location_where}: expected a string")

    if "GHL_ACCESS_TOKEN" in env:
        source = "environment variable GHL_ACCESS_TOKEN"
        token_value = env["GHL_ACCESS_TOKEN"].strip()
        if read_secrets and not token_value:
            raise ConfigError("GHL_ACCESS_TOKEN: must not be empty")
        token = Secret(token_value, source) if read_secrets else Secret.unread(source)
    elif "access_token" in table:
        token = _secret(table["access_token"], f"{where}.access_token", environ, read_secrets)
    else:
        raise ConfigError(f"{where}.access_token: required")

    category, category_where = setting("consent_category", "GHL_CONSENT_CATEGORY")
    if category is None:
        category = "marketing"
    if not isinstance(category, str) or not category.strip():
        raise ConfigError(f"{category_where}: expected a non-empty string")

    region, region_where = setting("default_phone_region", "GHL_DEFAULT_PHONE_REGION")
    if region == "":
        region = None
    if region is not None:
        if not isinstance(region, str) or region.upper() not in PHONE_REGIONS:
            raise ConfigError(f"{region_where}: expected a region code such as US or GB")
        region = region.upper()

    tag_mode = table.get("tag_mode", TagMode.UPSERT.value)
    if tag_mode not in {m.value for m in TagMode}:
        raise ConfigError(f"{where}.tag_mode: expected one of upsert, add")

    removed, custom = _fields(_table(table, "fields", f"{where}.fields"), f"{where}.fields")
    return Integration(
        id=ident,
        location_id=location.strip(),
        access_token=token,
        consent_category=category.strip(),
        default_phone_region=region,
        tag_mode=TagMode(tag_mode),
        removed_fields=removed,
        custom_fields=custom,
        aliases=_aliases(_table(table, "events", f"{where}.events"), f"{where}.events"),
        routing=_routing(_table(table, "routing", f"{where}.routing"), f"{where}.routing"),
    )


def _fields(
    table: dict[str, Any], where: str
) -> tuple[frozenset[str], tuple[CustomFieldMapping, ...]]:
    _unknown_keys(table, ("remove", "custom"), where)
    removed = frozenset(_string_list(table.get("remove", []), f"{where}.remove"))
    unknown = removed - REMOVABLE_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}.remove: {sorted(unknown)[0]!r} is not a default mapping "
            f"(removable: {', '.join(sorted(REMOVABLE_FIELDS))})"
        )
    if {"email", "phone"} <= removed:
        raise ConfigError(f"{where}.remove: removing both email and phone leaves no identifier")
    entries = table.get("custom", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.custom: expected [[...fields.custom]] tables")
    custom: list[CustomFieldMapping] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        entry_where = f"{where}.custom[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{entry_where}: expected a table")
        _unknown_keys(entry, ("id", "source"), entry_where)
        field_id = entry.get("id")
        if not isinstance(field_id, str) or not field_id.strip():
            raise ConfigError(f"{entry_where}.id: required (the HighLevel custom field id)")
        if field_id in seen:
            raise ConfigError(f"{entry_where}.id: {field_id!r} is mapped twice")
        seen.add(field_id)
        if "source" not in entry:
            raise ConfigError(f"{entry_where}.source: required (e.g. properties.plan)")
        source = _path(entry["source"], f"{entry_where}.source")
        custom.append(CustomFieldMapping(field_id.strip(), source))
    return removed, tuple(custom)


def _aliases(table: dict[str, Any], where: str) -> Mapping[str, PresetEvent]:
    _unknown_keys(table, ("aliases",), where)
    aliases = _table(table, "aliases", f"{where}.aliases")
    presets = {p.value for p in PresetEvent}
    result: dict[str, PresetEvent] = {}
    for name, target in aliases.items():
        if target not in presets:
            raise ConfigError(
                f"{where}.aliases.{name}: expected one of {', '.join(sorted(presets))}"
            )
        result[name] = PresetEvent(target)
    return MappingProxyType(result)


def _routing(table: dict[str, Any], where: str) -> Routing:
    _unknown_keys(table, ("topics", "field", "values"), where)
    topics = frozenset(_string_list(table.get("topics", []), f"{where}.topics"))
    if ("field" in table) != ("values" in table):
        raise ConfigError(f"{where}: field and values go together")
    if "field" not in table:
        return Routing(topics=topics)
    values = frozenset(_string_list(table["values"], f"{where}.values"))
    if not values:
        raise ConfigError(f"{where}.values: at least one value is required")
    return Routing(topics=topics, field=_path(table["field"], f"{where}.field"), values=values)
