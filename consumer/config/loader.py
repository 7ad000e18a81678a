"""``load_settings``: the one reader of configuration files and the environment, into the
values of ``consumer.config.settings``. Validation names the field in every ``ConfigError``
(the file's ``section.key`` or the environment variable) and never quotes a secret."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from consumer.config.integrations import read_integrations
from consumer.config.oauth import read_oauth_apps
from consumer.config.settings import (
    PLAIN_SECTIONS,
    DebugSettings,
    HighLevelSettings,
    Integration,
    KafkaSettings,
    MetricsSettings,
    OAuthApp,
    ProfileKey,
    ProfilesSettings,
    RedisSettings,
    Secret,
    Settings,
    aes_key,
)
from consumer.config.tables import read_secret, reject_unknown_keys, string_list, subtable
from consumer.errors import ConfigError

_OFFSET_RESETS: Final = frozenset(("earliest", "latest", "error"))
# librdkafka keys this file sets from typed settings; the passthrough table may not repeat them.
_OWNED_KAFKA_KEYS: Final = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "group.id": "kafka.group_id",
    "auto.offset.reset": "kafka.auto_offset_reset",
    "group.protocol": "kafka.group_protocol",
    "group.instance.id": "kafka.group_instance_id",
}
# librdkafka properties whose value is secret (its own "sensitive" ones: sasl.password,
# ssl.key.password, ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.config,
# sasl.oauthbearer.client.secret, ...): kept as Secret even when given literally.
_SENSITIVE_KEY = re.compile(
    r"password|passphrase|secret|token|credential|private|key\.pem|oauthbearer\.config",
    re.IGNORECASE,
)
_TOP_LEVEL: Final = frozenset(
    (*PLAIN_SECTIONS, "kafka", "debug", "profiles", "integrations", "oauth")
)
_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INSTANCE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")  # the broker's rule (KIP-345)


def load_settings(
    path: str | None,
    environ: Mapping[str, str],
    *,
    read_secrets: bool = True,
    kafka_secrets: bool | None = None,
    profile_keys: bool | None = None,
    oauth_secrets: bool | None = None,
    token_store: bool | None = None,
    integrations_required: bool = True,
) -> Settings:
    """Read ``path`` (TOML; None = no file) and ``environ``; validate; return Settings.

    ``read_secrets=False`` validates where secrets come from but does not read them (tokens
    become ``Secret.unread``): for commands that send nothing to HighLevel. ``kafka_secrets``
    (default: ``read_secrets``) decides the same for the ``[kafka.librdkafka]`` secrets: the
    operator commands that read Kafka without HighLevel tokens (dlq, audit) pass True, the dry
    run reads neither. ``profile_keys`` (default: ``read_secrets``) decides it for the
    ``[profiles]`` encryption keys: ``run`` and ``forget`` read them, which checks each is 32
    bytes. ``oauth_secrets`` (default: ``read_secrets``) decides it for the ``[[oauth]]``
    client secrets. ``token_store`` (default: ``oauth_secrets``) says whether the command uses
    the OAuth token store: with ``[[oauth]]`` it then needs ``redis.url``; commands that never
    reach HighLevel's OAuth (audit, dlq, the dry run) do not. ``integrations_required=False``
    accepts a configuration without any
    integration (the ``oauth`` commands need only ``[[oauth]]``). Raises ConfigError.
    """
    doc: dict[str, Any] = _read_toml(path) if path is not None else {}
    for key in doc:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(_TOP_LEVEL))})")
    sections: dict[str, Any] = {
        name: _plain_section(cls, subtable(doc, name, name), name)
        for name, cls in PLAIN_SECTIONS.items()
    }
    sections["highlevel"] = _env_highlevel(sections["highlevel"], environ)
    sections["metrics"] = _env_metrics(sections["metrics"], environ)
    sections["redis"] = _env_redis(sections["redis"], environ)
    sections["debug"] = _debug(subtable(doc, "debug", "debug"), environ)
    if kafka_secrets is None:
        kafka_secrets = read_secrets
    kafka = _kafka(subtable(doc, "kafka", "kafka"), environ, kafka_secrets)
    sections["profiles"] = _profiles(
        subtable(doc, "profiles", "profiles"),
        environ,
        read_secrets if profile_keys is None else profile_keys,
    )
    _check_partitioned_profiles(sections["profiles"], kafka)
    integrations: tuple[Integration, ...] = ()
    if integrations_required or doc.get("integrations") or "GHL_LOCATION_ID" in environ:
        integrations = read_integrations(doc.get("integrations"), environ, read_secrets)
    if oauth_secrets is None:
        oauth_secrets = read_secrets
    sections["oauth"] = read_oauth_apps(doc.get("oauth"), environ, oauth_secrets)
    _check_oauth_integrations(integrations, sections["oauth"])
    uses_store = oauth_secrets if token_store is None else token_store
    if sections["oauth"] and uses_store and not sections["redis"].url:
        raise ConfigError(
            "redis.url: required with [[oauth]] (REDIS_URL): the token store every replica "
            "shares"
        )
    return Settings(integrations=integrations, kafka=kafka, config_path=path, **sections)


def _check_oauth_integrations(
    integrations: tuple[Integration, ...], apps: tuple[OAuthApp, ...]
) -> None:
    """Each ``oauth = "<id>"`` names an ``[[oauth]]`` table, and a fixed ``location_id`` is
    one the table lists (when it does not discover its locations). Raises ConfigError."""
    by_id = {app.id: app for app in apps}
    for index, integration in enumerate(integrations):
        if integration.oauth is None:
            continue
        app = by_id.get(integration.oauth)
        if app is None:
            known = ", ".join(by_id) or "none"
            raise ConfigError(
                f"integrations[{index}].oauth: no [[oauth]] table with id "
                f"{integration.oauth!r} (known: {known})"
            )
        location = integration.location_id
        if location and not app.discover and location not in app.locations:
            raise ConfigError(
                f"integrations[{index}].location_id: {location!r} is not one of "
                f"[[oauth]] {app.id}'s locations"
            )


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


def _plain_section(cls: type, table: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("env_only")}
    reject_unknown_keys(table, fields, where)
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
    allow = section.allow_insecure_http
    if "GHL_ALLOW_INSECURE_HTTP" in environ:
        flag = environ["GHL_ALLOW_INSECURE_HTTP"].strip().lower()
        if flag not in ("true", "false"):
            raise ConfigError("GHL_ALLOW_INSECURE_HTTP: expected true or false")
        allow = flag == "true"
    if url.startswith("http://") and not allow and not _loopback(url):
        # every request carries a bearer token: in clear only to this machine
        raise ConfigError(
            f"{where}: http:// only for a loopback host (127.0.0.1, ::1, localhost); use "
            "https://, or set highlevel.allow_insecure_http = true"
        )
    return HighLevelSettings(api_base_url=url.rstrip("/"), allow_insecure_http=allow)


def _loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine: 127.0.0.0/8, ::1 or localhost."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:  # e.g. an unbalanced [ in the host
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def _env_redis(section: RedisSettings, environ: Mapping[str, str]) -> RedisSettings:
    url = environ.get("REDIS_URL", section.url).strip()
    where = "REDIS_URL" if "REDIS_URL" in environ else "redis.url"
    if url and not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(f"{where}: expected a {', '.join(_REDIS_SCHEMES)} URL, or empty")
    return RedisSettings(url=url)


def _env_metrics(section: MetricsSettings, environ: Mapping[str, str]) -> MetricsSettings:
    return dataclasses.replace(
        section,
        port=_env_port(environ, "METRICS_PORT", section.port, "metrics.port"),
        host=_env_host(environ, "METRICS_HOST", section.host, "metrics.host"),
    )


def _debug(table: Mapping[str, Any], environ: Mapping[str, str]) -> DebugSettings:
    plain = {key: value for key, value in table.items() if key != "allowed_hosts"}
    section: DebugSettings = _plain_section(DebugSettings, plain, "debug")
    if "DEBUG_ALLOWED_HOSTS" in environ:
        raw = environ["DEBUG_ALLOWED_HOSTS"]
        allowed = [h.strip().lower() for h in raw.split(",") if h.strip()]
    else:
        allowed = string_list(table.get("allowed_hosts", []), "debug.allowed_hosts")
    host = _env_host(environ, "DEBUG_HOST", section.host, "debug.host")
    token = environ.get("DEBUG_ACCESS_TOKEN", "")
    if not token and not _is_loopback(host):
        where = "DEBUG_HOST" if "DEBUG_HOST" in environ else "debug.host"
        raise ConfigError(
            f"{where}: {host} is not a loopback address and the Event Debugger shows contact "
            "data: set DEBUG_ACCESS_TOKEN, or bind 127.0.0.1 and use kubectl port-forward"
        )
    return dataclasses.replace(
        section,
        host=host,
        port=_env_port(environ, "DEBUG_PORT", section.port, "debug.port"),
        allowed_hosts=tuple(dict.fromkeys(h.lower() for h in allowed)),
        access_token=Secret(token, "environment variable DEBUG_ACCESS_TOKEN") if token else None,
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _env_port(environ: Mapping[str, str], name: str, port: int, where: str) -> int:
    if name in environ:
        text = environ[name].strip()
        if not text.isdigit():
            raise ConfigError(f"{name}: expected a port number")
        port, where = int(text), name
    if port > 65535:
        raise ConfigError(f"{where}: must be at most 65535")
    return port


def _env_host(environ: Mapping[str, str], name: str, host: str, where: str) -> str:
    host = environ.get(name, host).strip()
    if not host:
        raise ConfigError(f"{name if name in environ else where}: must not be empty")
    return host


def _kafka(table: dict[str, Any], environ: Mapping[str, str], read_secrets: bool) -> KafkaSettings:
    defaults = KafkaSettings()
    reject_unknown_keys(
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
            "erasure_topic",
            "replay_topic",
            "stitch_topic",
            "delivery_topic",
            "dead_letter_retention_ms",
            "parking_retention_ms",
            "delivery_retention_ms",
            "session_timeout_ms",
            "group_instance_id",
            "create_topics",
            "startup_timeout_seconds",
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
    erasures, _ = text("erasure_topic", "KAFKA_ERASURE_TOPIC", f"{group}.erasures")
    replays, replays_where = text("replay_topic", "KAFKA_REPLAY_TOPIC", f"{group}.replay")
    stitches, stitches_where = text("stitch_topic", "KAFKA_STITCH_TOPIC", f"{group}.stitch")
    deliveries, _ = text("delivery_topic", "KAFKA_DELIVERY_TOPIC", f"{group}.deliveries")
    session_timeout = _session_timeout(table, environ, protocol)

    if "KAFKA_TOPICS" in environ:
        topics = [t.strip() for t in environ["KAFKA_TOPICS"].split(",") if t.strip()]
        topics_where = "KAFKA_TOPICS"
    else:
        topics = string_list(table.get("topics", list(defaults.topics)), "kafka.topics")
        topics_where = "kafka.topics"
    if not topics:
        raise ConfigError(f"{topics_where}: at least one topic is required")
    # The replay and stitch groups are named after their topics: sharing a name with the main
    # group or another own topic (parking's group too) would mix their members or records.
    others = (
        (group, "the group id"),
        (dead_letter, "the dead-letter topic"),
        (profiles, "the profile topic"),
        (parking, "the parking topic"),
        (erasures, "the erasure topic"),
        (deliveries, "the delivery topic"),
    )
    for topic, where, earlier in (
        (replays, replays_where, others),
        (stitches, stitches_where, (*others, (replays, "the replay topic"))),
    ):
        if topic in topics:
            raise ConfigError(f"{where}: {topic} is one of {topics_where}: name another")
        for name, what in earlier:
            if topic == name:
                raise ConfigError(f"{where}: {topic} is {what}: name another")

    passthrough: dict[str, str | Secret] = {}
    for key, value in subtable(table, "librdkafka", "kafka.librdkafka").items():
        where = f"kafka.librdkafka.{key}"
        if key in _OWNED_KAFKA_KEYS:
            raise ConfigError(f"{where}: set {_OWNED_KAFKA_KEYS[key]} instead")
        if isinstance(value, dict):
            passthrough[key] = read_secret(value, where, environ, read_secrets)
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
        erasure_topic=erasures,
        replay_topic=replays,
        stitch_topic=stitches,
        delivery_topic=deliveries,
        dead_letter_retention_ms=_retention(
            table, environ, "dead_letter_retention_ms", defaults.dead_letter_retention_ms
        ),
        parking_retention_ms=_retention(
            table, environ, "parking_retention_ms", defaults.parking_retention_ms
        ),
        delivery_retention_ms=_retention(
            table, environ, "delivery_retention_ms", defaults.delivery_retention_ms
        ),
        session_timeout_ms=session_timeout,
        group_instance_id=_group_instance_id(table, environ),
        create_topics=_create_topics(table, environ),
        startup_timeout_seconds=_startup_timeout(table, environ),
        librdkafka=MappingProxyType(passthrough),
    )


def _profiles(
    table: Mapping[str, Any], environ: Mapping[str, str], read_secrets: bool
) -> ProfilesSettings:
    """``[profiles]``; when ``read_secrets``, each key is read and checked (32 bytes, base64)."""
    reject_unknown_keys(
        table, ("encryption_keys", "encryption_key_id", "state_dir", "cache_entries"), "profiles"
    )
    entries = table.get("encryption_keys", [])
    if not isinstance(entries, list):
        raise ConfigError('profiles.encryption_keys: expected a list of { id = ..., key = ... }')
    keys: list[ProfileKey] = []
    for n, entry in enumerate(entries):
        where = f"profiles.encryption_keys[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table {{ id = ..., key = ... }}")
        reject_unknown_keys(entry, ("id", "key"), where)
        key_id = entry.get("id")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise ConfigError(f"{where}.id: expected 1 to 64 of A-Z a-z 0-9 . _ -")
        if any(k.id == key_id for k in keys):
            raise ConfigError(f"{where}.id: {key_id!r} is given twice")
        if "key" not in entry:
            raise ConfigError(f'{where}.key: required ({{ env = "NAME" }} or {{ file = "PATH" }})')
        secret = read_secret(entry["key"], f"{where}.key", environ, read_secrets)
        if read_secrets:
            try:
                aes_key(secret.reveal())
            except ValueError as exc:
                raise ConfigError(f"{where}.key ({secret.source}): {exc}") from None
        keys.append(ProfileKey(key_id, secret))
    write_key = table.get("encryption_key_id", "")
    if not isinstance(write_key, str):
        raise ConfigError("profiles.encryption_key_id: expected a string")
    if write_key and write_key not in {k.id for k in keys}:
        raise ConfigError(
            f"profiles.encryption_key_id: {write_key!r} is not an id in profiles.encryption_keys"
        )
    state_dir = table.get("state_dir", "")
    if not isinstance(state_dir, str):
        raise ConfigError("profiles.state_dir: expected a directory path (a string)")
    cache_entries = table.get("cache_entries", 100_000)
    if type(cache_entries) is not int or cache_entries < 1:
        raise ConfigError("profiles.cache_entries: expected a whole number >= 1")
    return ProfilesSettings(
        encryption_keys=tuple(keys),
        encryption_key_id=write_key,
        state_dir=state_dir.strip(),
        cache_entries=cache_entries,
    )


def _check_partitioned_profiles(profiles: ProfilesSettings, kafka: KafkaSettings) -> None:
    """Partitioned profile state keeps a profile in the changelog partition of its events'
    partition: that holds for one input topic only. Raises ConfigError."""
    if profiles.state_dir and len(kafka.topics) != 1:
        raise ConfigError(
            f"profiles.state_dir: partitioned profile state needs exactly one topic in "
            f"kafka.topics (it has {len(kafka.topics)}: {', '.join(kafka.topics)}); a "
            "profile lives in the changelog partition of its events' partition. Use one "
            "topic, keyed by the user, or leave profiles.state_dir empty"
        )


def _retention(
    table: Mapping[str, Any], environ: Mapping[str, str], key: str, default: int
) -> int:
    """A topic's ``retention.ms`` from ``kafka.<key>`` or ``KAFKA_<KEY>``: at least one hour."""
    env = f"KAFKA_{key.upper()}"
    if env in environ:
        where, raw = env, environ[env].strip()
        value: object = int(raw) if raw.isdigit() else raw
    else:
        where, value = f"kafka.{key}", table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 3_600_000:
        raise ConfigError(f"{where}: expected milliseconds, at least 3600000 (one hour)")
    return value


def _create_topics(table: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    """``kafka.create_topics`` or ``KAFKA_CREATE_TOPICS`` (true | false)."""
    if "KAFKA_CREATE_TOPICS" in environ:
        raw = environ["KAFKA_CREATE_TOPICS"].strip().lower()
        if raw not in ("true", "false"):
            raise ConfigError("KAFKA_CREATE_TOPICS: expected true or false")
        return raw == "true"
    value = table.get("create_topics", True)
    if not isinstance(value, bool):
        raise ConfigError("kafka.create_topics: expected true or false")
    return value


def _startup_timeout(table: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    """``kafka.startup_timeout_seconds`` or ``KAFKA_STARTUP_TIMEOUT_SECONDS``: 0 or more."""
    env = "KAFKA_STARTUP_TIMEOUT_SECONDS"
    if env in environ:
        where, raw = env, environ[env].strip()
        value: object = int(raw) if raw.isdigit() else raw
    else:
        where, value = "kafka.startup_timeout_seconds", table.get("startup_timeout_seconds", 60)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected whole seconds, 0 (wait for ever) or more")
    return value


def _group_instance_id(table: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """``kafka.group_instance_id`` (``KAFKA_GROUP_INSTANCE_ID``): empty, or what the broker
    accepts as ``group.instance.id`` (as a topic name: 1-249 of ``[A-Za-z0-9._-]``)."""
    if "KAFKA_GROUP_INSTANCE_ID" in environ:
        where, value = "KAFKA_GROUP_INSTANCE_ID", environ["KAFKA_GROUP_INSTANCE_ID"]
    else:
        where, value = "kafka.group_instance_id", table.get("group_instance_id", "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    value = value.strip()
    if value and not _INSTANCE_ID.fullmatch(value):
        raise ConfigError(
            f"{where}: {value!r}: at most 249 of A-Z, a-z, 0-9, '.', '_', '-' (empty: dynamic "
            "membership)"
        )
    return value


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
