"""Settings: file + environment, field-naming errors, secrets never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.commands.run import consumer_topics, topic_uses
from consumer.config import Secret, Settings, load_settings
from consumer.core.events import ConsentMode, PresetEvent, TagMode
from consumer.core.targets import CustomFieldMapping, Routing
from consumer.errors import ConfigError
from consumer.kafka.admin import TopicUse
from consumer.kafka.clients import member_config
from consumer.kafka.source import KafkaSource

EXAMPLE = Path(__file__).parents[2] / "examples" / "config.toml"
ENV = {"GHL_LOCATION_ID": "LOC", "GHL_ACCESS_TOKEN": "pit-secret-value"}


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(str(path), environ or {})


def test_environment_only_gives_one_default_integration_receiving_everything() -> None:
    settings = load_settings(None, ENV)
    (default,) = settings.integrations
    assert default.id == "default"
    assert default.location_id == "LOC"
    assert default.access_token.reveal() == "pit-secret-value"
    assert default.target.consent_category == "marketing"
    assert default.target.default_phone_region is None
    assert default.target.tag_mode is TagMode.UPSERT
    assert default.target.routing == Routing()
    assert settings.kafka.topics == ("events",)
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.group_id == "ghl-consumer"
    assert settings.kafka.auto_offset_reset == "earliest"
    assert settings.highlevel.api_base_url == "https://services.leadconnectorhq.com"
    assert settings.metrics.port == 9464
    assert settings.redis.url == ""


def test_environment_overrides() -> None:
    settings = load_settings(
        None,
        {
            **ENV,
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "KAFKA_TOPICS": "a, b,,a",
            "KAFKA_GROUP_ID": "g",
            "KAFKA_AUTO_OFFSET_RESET": "latest",
            "GHL_API_BASE_URL": "http://127.0.0.1:8900/",
            "GHL_CONSENT_CATEGORY": "email",
            "GHL_DEFAULT_PHONE_REGION": "gb",
            "METRICS_PORT": "9000",
            "REDIS_URL": "redis://r:6379/0",
        },
    )
    kafka = settings.kafka
    assert (kafka.bootstrap_servers, kafka.group_id, kafka.auto_offset_reset) == (
        "k1:9092,k2:9092",
        "g",
        "latest",
    )
    assert kafka.extra_settings() == {}
    assert settings.kafka.topics == ("a", "b")
    assert settings.highlevel.api_base_url == "http://127.0.0.1:8900"
    assert settings.integrations[0].target.consent_category == "email"
    assert settings.integrations[0].target.default_phone_region == "GB"
    assert settings.metrics.port == 9000
    assert settings.redis.url == "redis://r:6379/0"


def test_the_documented_example(tmp_path: Path) -> None:
    settings = load_settings(str(EXAMPLE), {}, read_secrets=False)
    default, shop = settings.integrations
    assert default.target.removed_fields == frozenset({"dnd"})
    assert default.target.custom_fields == (
        CustomFieldMapping("6dvNaf7VhkQ9snc5vnjJ", ("properties", "plan")),
        CustomFieldMapping("q8XkT3bLm1NcVa0PzR2e", ("context", "campaign", "name")),
    )
    assert default.target.aliases == {
        "sign_up": PresetEvent.SIGNED_UP,
        "generate_lead": PresetEvent.LEAD_GENERATED,
        "login": PresetEvent.IDENTIFIED,
    }
    assert default.target.routing == Routing(topics=frozenset({"events"}))
    assert shop.target.tag_mode is TagMode.ADD
    assert shop.target.consent_mode is ConsentMode.DENY_ONLY
    assert default.target.consent_mode is ConsentMode.BOTH
    assert (shop.target.static_tags, shop.target.default_source, shop.target.static_source) == (
        ("eu-shop",),
        "EU shop",
        None,
    )
    assert shop.target.routing == Routing(
        topics=frozenset({"events-eu"}),
        field=("context", "app", "name"),
        values=frozenset({"shop"}),
    )
    with pytest.raises(ConfigError, match="was not read"):
        shop.access_token.reveal()
    assert settings.kafka.librdkafka["security.protocol"] == "SASL_SSL"
    assert settings.mapping.options().limits.max_field_chars == 1024
    # The core's view of an integration: every mapping choice, never the token.
    target = settings.targets()[1]
    assert (target.id, target.location_id) == (shop.id, shop.location_id)
    assert target.routing == shop.target.routing
    assert target.custom_fields == shop.target.custom_fields
    assert target.aliases == shop.target.aliases
    assert (target.consent_mode, target.static_tags, target.default_source) == (
        ConsentMode.DENY_ONLY,
        ("eu-shop",),
        "EU shop",
    )
    assert not hasattr(target, "access_token")


def test_secrets_from_env_and_file_are_read_and_never_printed(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-value\n")
    settings = load(
        tmp_path,
        f"""
        [kafka.librdkafka]
        "sasl.password" = {{ env = "SASL_PW" }}
        "ssl.key.password" = "literal-key-password"
        "client.id" = "x"
        [[integrations]]
        id = "a"
        location_id = "L1"
        access_token = {{ env = "TOKEN_A" }}
        [[integrations]]
        id = "b"
        location_id = "L2"
        access_token = {{ file = "{token_file}" }}
        """,
        {"TOKEN_A": "env-token-value", "SASL_PW": "sasl-pw-value"},
    )
    a, b = settings.integrations
    assert a.access_token.reveal() == "env-token-value"
    assert b.access_token.reveal() == "file-token-value"
    assert settings.kafka.extra_settings()["sasl.password"] == "sasl-pw-value"
    assert settings.kafka.extra_settings()["client.id"] == "x"
    printed = repr(settings) + str(settings) + str(a.access_token)
    for secret in ("env-token-value", "file-token-value", "sasl-pw-value", "literal-key-password"):
        assert secret not in printed
    assert str(a.access_token) == "***"
    assert repr(a.access_token) == "Secret('***')"


def test_env_overrides_the_file_integration_named_default(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [[integrations]]
        id = "default"
        location_id = "FROM-FILE"
        access_token = { env = "NOT_SET" }
        """,
        ENV,
    )
    assert settings.integrations[0].location_id == "LOC"
    assert settings.integrations[0].access_token.reveal() == "pit-secret-value"


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("", {}, "integrations: none configured"),
        ("", {"GHL_LOCATION_ID": "L"}, "GHL_ACCESS_TOKEN: required when GHL_LOCATION_ID is set"),
        ("", {"GHL_ACCESS_TOKEN": "t"}, "GHL_LOCATION_ID: required when GHL_ACCESS_TOKEN is set"),
        ("[kafak]\n", ENV, "kafak: unknown section"),
        ("[kafka]\ntopics = []\n", ENV, "kafka.topics: at least one topic is required"),
        ("[kafka]\ntopics = 'events'\n", ENV, "kafka.topics: expected a list of non-empty strings"),
        ("[kafka]\nauto_offset_reset = 'first'\n", ENV, "kafka.auto_offset_reset: expected one of"),
        ("", {**ENV, "KAFKA_AUTO_OFFSET_RESET": "x"}, "KAFKA_AUTO_OFFSET_RESET: expected one of"),
        ("", {**ENV, "KAFKA_TOPICS": " , "}, "KAFKA_TOPICS: at least one topic is required"),
        (
            "[kafka.librdkafka]\n'group.id' = 'x'\n",
            ENV,
            "kafka.librdkafka.group.id: set kafka.group_id instead",
        ),
        ("", {**ENV, "METRICS_PORT": "http"}, "METRICS_PORT: expected a port number"),
        ("[metrics]\nport = 70000\n", ENV, "metrics.port: must be at most 65535"),
        ("[metrics]\nport = '9464'\n", ENV, "metrics.port: expected a number"),
        ("[mapping]\nphone_cache_size = 0\n", ENV, "mapping.phone_cache_size: must be at least 1"),
        (
            "[mapping]\nphone_cache_size = 1.5\n",
            ENV,
            "mapping.phone_cache_size: expected an integer",
        ),
        ("[mapping]\nphone_cahce_size = 1\n", ENV, "mapping.phone_cahce_size: unknown setting"),
        (
            "[engine]\ncoalesce_window_ms = true\n",
            ENV,
            "engine.coalesce_window_ms: expected a number",
        ),
        (
            "",
            {**ENV, "GHL_API_BASE_URL": "ftp://x"},
            "GHL_API_BASE_URL: expected an http(s):// URL",
        ),
        ("[[integrations]]\nlocation_id = 'L'\n", {}, "integrations[0].id: required"),
        ("[[integrations]]\nid = 'a b'\n", {}, "integrations[0].id: expected letters"),
        ("[[integrations]]\nid = 'a'\n", {}, "integrations[0].location_id: required"),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\n",
            {},
            "integrations[0].access_token: required",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = 'pit-123'\n",
            {},
            'integrations[0].access_token: give { env = "NAME" } or { file = "PATH" }, not the '
            "secret itself",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = { env = 'MISSING' }\n",
            {},
            "integrations[0].access_token: environment variable MISSING is not set",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\n"
            "access_token = { file = '/nonexistent/token' }\n",
            {},
            "integrations[0].access_token: cannot read file /nonexistent/token",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = { vault = 'x' }\n",
            {},
            "integrations[0].access_token: expected",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = { env = 'T' }\n"
            "[[integrations]]\nid = 'a'\nlocation_id = 'L2'\naccess_token = { env = 'T' }\n",
            {"T": "t"},
            "integrations[1].id: duplicate id 'a' (also integrations[0])",
        ),
        (
            "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = { env = 'T' }\n",
            {**ENV, "T": "t"},
            "GHL_LOCATION_ID: set, but the config file defines integrations and none has id",
        ),
    ],
)
def test_errors_name_the_field(
    text: str, environ: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    assert str(caught.value).startswith(message)
    assert "pit-secret-value" not in str(caught.value)


INTEGRATION = "[[integrations]]\nid = 'a'\nlocation_id = 'L'\naccess_token = { env = 'T' }\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("lcoation = 1\n", "integrations[0].lcoation: unknown setting"),
        (
            "default_phone_region = 'XX'\n",
            "integrations[0].default_phone_region: expected a region",
        ),
        (
            "consent_category = ''\n",
            "integrations[0].consent_category: expected a non-empty string",
        ),
        ("tag_mode = 'replace'\n", "integrations[0].tag_mode: expected one of upsert, add"),
        (
            "consent_mode = 'grant_only'\n",
            "integrations[0].consent_mode: expected one of both, deny_only",
        ),
        (
            "[integrations.fields]\ntags = ['a', '']\n",
            "integrations[0].fields.tags: expected a list of non-empty strings",
        ),
        (
            "[integrations.fields]\nstatic_source = 'a'\ndefault_source = 'b'\n",
            "integrations[0].fields: static_source and default_source exclude each other",
        ),
        (
            "[integrations.fields]\ndefault_source = 5\n",
            "integrations[0].fields.default_source: expected a non-empty string",
        ),
        (
            "[integrations.fields]\nremove = ['dnd', 'assignedTo']\n",
            "integrations[0].fields.remove: 'assignedTo'",
        ),
        (
            "[integrations.fields]\nremove = ['email', 'phone']\n",
            "integrations[0].fields.remove: removing both email and phone",
        ),
        (
            "[[integrations.fields.custom]]\nsource = 'properties.x'\n",
            "integrations[0].fields.custom[0].id: required",
        ),
        (
            "[[integrations.fields.custom]]\nid = 'f'\n",
            "integrations[0].fields.custom[0].source: required",
        ),
        (
            "[[integrations.fields.custom]]\nid = 'f'\nsource = 'properties..x'\n",
            "integrations[0].fields.custom[0].source: 'properties..x' is not a dotted path",
        ),
        (
            "[[integrations.fields.custom]]\nid = 'f'\nsource = 'a'\n"
            "[[integrations.fields.custom]]\nid = 'f'\nsource = 'b'\n",
            "integrations[0].fields.custom[1].id: 'f' is mapped twice",
        ),
        (
            "[integrations.events]\naliases = { signup = 'Signed In' }\n",
            "integrations[0].events.aliases.signup: expected one of Identified, Lead Generated",
        ),
        (
            "[integrations.routing]\nfield = 'context.app'\n",
            "integrations[0].routing: field and values go together",
        ),
        (
            "[integrations.routing]\ntopics = [1]\n",
            "integrations[0].routing.topics: expected a list",
        ),
    ],
)
def test_integration_errors_name_the_field(extra: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, INTEGRATION + extra, {"T": "t"})
    assert str(caught.value).startswith(message)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "missing.toml"), ENV)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(tmp_path, "[kafka\n", ENV)


def test_unread_secret_cannot_be_revealed() -> None:
    with pytest.raises(ConfigError, match="environment variable T was not read"):
        Secret.unread("environment variable T").reveal()


def test_group_protocol_and_dead_letter_topic_have_defaults_and_env_overrides() -> None:
    base = {"GHL_LOCATION_ID": "L", "GHL_ACCESS_TOKEN": "t", "KAFKA_GROUP_ID": "g"}
    defaults = load_settings(None, base).kafka
    assert (defaults.group_protocol, defaults.dead_letter_topic) == ("classic", "g.dead-letter")
    chosen = load_settings(
        None, {**base, "KAFKA_GROUP_PROTOCOL": "consumer", "KAFKA_DEAD_LETTER_TOPIC": "dlq"}
    ).kafka
    assert (chosen.group_protocol, chosen.dead_letter_topic) == ("consumer", "dlq")
    with pytest.raises(ConfigError, match=r"^KAFKA_GROUP_PROTOCOL: expected classic or consumer$"):
        load_settings(None, {**base, "KAFKA_GROUP_PROTOCOL": "eager"})


def test_session_timeout_is_for_the_classic_protocol_only() -> None:
    base = {"GHL_LOCATION_ID": "L", "GHL_ACCESS_TOKEN": "t"}
    assert load_settings(None, base).kafka.session_timeout_ms is None
    assert (
        load_settings(None, {**base, "KAFKA_SESSION_TIMEOUT_MS": "6000"}).kafka.session_timeout_ms
        == 6000
    )
    with pytest.raises(ConfigError, match=r"^KAFKA_SESSION_TIMEOUT_MS: .*KIP-848"):
        load_settings(
            None,
            {**base, "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_GROUP_PROTOCOL": "consumer"},
        )
    with pytest.raises(ConfigError, match=r"^KAFKA_SESSION_TIMEOUT_MS: expected"):
        load_settings(None, {**base, "KAFKA_SESSION_TIMEOUT_MS": "soon"})


def test_group_instance_id_gives_the_event_feed_static_membership() -> None:
    base = {"GHL_LOCATION_ID": "L", "GHL_ACCESS_TOKEN": "t"}
    assert load_settings(None, base).kafka.group_instance_id == ""  # dynamic membership
    env = {**base, "KAFKA_GROUP_INSTANCE_ID": " ghl-consumer-2 "}
    assert load_settings(None, env).kafka.group_instance_id == "ghl-consumer-2"
    unset = {**base, "KAFKA_GROUP_INSTANCE_ID": ""}
    assert load_settings(None, unset).kafka.group_instance_id == ""
    with pytest.raises(ConfigError, match=r"^KAFKA_GROUP_INSTANCE_ID: 'pod 2': at most 249 of"):
        load_settings(None, {**base, "KAFKA_GROUP_INSTANCE_ID": "pod 2"})
    with pytest.raises(ConfigError, match=r"^KAFKA_GROUP_INSTANCE_ID: 'xx.*': at most 249 of"):
        load_settings(None, {**base, "KAFKA_GROUP_INSTANCE_ID": "x" * 250})


def test_group_instance_id_from_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, "[kafka]\ngroup_instance_id = 'pod-0'\n", ENV)
    assert settings.kafka.group_instance_id == "pod-0"
    with pytest.raises(ConfigError, match=r"^kafka.group_instance_id: expected a string$"):
        load(tmp_path, "[kafka]\ngroup_instance_id = 0\n", ENV)
    with pytest.raises(
        ConfigError, match=r"^kafka.librdkafka.group.instance.id: set kafka.group_instance_id"
    ):
        load(tmp_path, "[kafka.librdkafka]\n'group.instance.id' = 'pod-0'\n", ENV)


def test_only_a_subscribing_source_takes_the_instance_id() -> None:
    def config(instance: str | None, **extra: str) -> dict[str, Any]:
        return member_config(
            bootstrap="k:9092",
            group_id="g",
            auto_offset_reset="earliest",
            group_protocol="classic",
            client_id="c",
            session_timeout_ms=None,
            heartbeat_interval_ms=None,
            max_poll_interval_ms=300_000,
            queued_max_messages_kbytes=2048,
            fetch_max_bytes=1024,
            max_partition_fetch_bytes=1024,
            group_instance_id=instance,
            extra=extra,
        )

    assert config("pod-0")["group.instance.id"] == "pod-0"
    assert "group.instance.id" not in config(None)
    assert "group.instance.id" not in config("")
    with pytest.raises(ConfigError, match=r"set by the source itself: \['group.instance.id'\]"):
        config(None, **{"group.instance.id": "pod-0"})  # never through the pass-through table
    with pytest.raises(ConfigError, match="joins no group, so it takes no group instance id"):
        KafkaSource(
            bootstrap="k:9092", group_id="g", topics=["t"], subscribe=False, group_instance_id="p"
        )


def _plain_fields() -> list[tuple[str, str, type, object]]:
    """(section, field, type, lower bound or None) of every file setting of the plain sections."""
    import dataclasses
    import typing

    from consumer.config.settings import PLAIN_SECTIONS

    return [
        (section, f.name, typing.get_type_hints(cls)[f.name], f.metadata.get("min"))
        for section, cls in PLAIN_SECTIONS.items()
        for f in dataclasses.fields(cls)
        if not f.metadata.get("env_only")
    ]


@pytest.mark.parametrize(("section", "name", "kind", "minimum"), _plain_fields())
def test_every_plain_setting_names_itself_when_invalid(
    section: str, name: str, kind: type, minimum: object, tmp_path: Path
) -> None:
    """Generated from the settings classes, so a new setting is covered the day it is added:
    a value of the wrong type, and one below the lower bound, stop loading with an error
    that starts with the setting's dotted name."""
    wrong = "'text'" if kind is not str else "3"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[{section}]\n{name} = {wrong}\n", ENV)
    assert str(caught.value).startswith(f"{section}.{name}: expected")
    if isinstance(minimum, int | float) and minimum > 0:
        below = minimum - 1 if kind is int else minimum / 2
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, f"[{section}]\n{name} = {below}\n", ENV)
        assert str(caught.value).startswith(f"{section}.{name}: must be at least {minimum}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[delivery]\nrate_burst = 10\nrate_sustained = 11\n",
            "delivery.rate_sustained: must be at most delivery.rate_burst (10)",
        ),
        (
            "[delivery]\nretry_base_seconds = 5\nretry_max_seconds = 1\n",
            "delivery.retry_max_seconds: must be at least delivery.retry_base_seconds (5.0)",
        ),
        ("[redis]\nurl = 'localhost:6379'\n", "redis.url: expected a redis://"),
        ("[metrics]\nhost = ' '\n", "metrics.host: must not be empty"),
    ],
)
def test_settings_bounded_by_each_other_or_by_form_name_the_field(
    text: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, ENV)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", " ", "must not be empty"),
        ("KAFKA_TOPICS", ",", "at least one topic is required"),
        ("KAFKA_GROUP_ID", "", "must not be empty"),
        ("KAFKA_AUTO_OFFSET_RESET", "first", "expected one of"),
        ("KAFKA_GROUP_PROTOCOL", "eager", "expected classic or consumer"),
        ("KAFKA_DEAD_LETTER_TOPIC", "", "must not be empty"),
        ("KAFKA_PROFILE_TOPIC", "", "must not be empty"),
        ("KAFKA_PARKING_TOPIC", "", "must not be empty"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6s", "expected a number of milliseconds"),
        ("GHL_API_BASE_URL", "services.leadconnectorhq.com", "expected an http(s):// URL"),
        ("GHL_API_BASE_URL", "https://u:pit-secret-value@gw.example", "must not carry user:"),
        ("GHL_API_BASE_URL", "http://gw.example", "http:// only for a loopback host"),
        ("GHL_ALLOW_INSECURE_HTTP", "yes", "expected true or false"),
        ("METRICS_PORT", "-1", "expected a port number"),
        ("METRICS_HOST", "", "must not be empty"),
        ("DEBUG_PORT", "ninety", "expected a port number"),
        ("DEBUG_PORT", "70000", "must be at most 65535"),
        ("DEBUG_HOST", " ", "must not be empty"),
        ("DEBUG_HOST", "0.0.0.0", "0.0.0.0 is not a loopback address"),
        ("DEBUG_HOST", "debugger.internal", "debugger.internal is not a loopback address"),
        ("REDIS_URL", "127.0.0.1:6379", "expected a redis://"),
        ("GHL_ACCESS_TOKEN", "", "must not be empty"),
        ("GHL_CONSENT_CATEGORY", "", "expected a non-empty string"),
        ("GHL_DEFAULT_PHONE_REGION", "XX", "expected a region"),
    ],
)
def test_every_environment_variable_names_itself_when_invalid(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {**ENV, name: value})
    assert str(caught.value).startswith(f"{name}: {message}")
    assert "pit-secret-value" not in str(caught.value)


def test_topics_holding_raw_events_expire_after_14_days_unless_configured(
    tmp_path: Path,
) -> None:
    settings = load_settings(None, ENV)
    assert settings.kafka.erasure_topic == "ghl-consumer.erasures"
    specs = consumer_topics(settings.kafka)
    retention = {spec.name: spec.config.get("retention.ms") for spec in specs}
    assert retention == {
        "ghl-consumer.dead-letter": "1209600000",
        "ghl-consumer.replay": "1209600000",  # copies of dead letters: the same retention
        "ghl-consumer.profiles": None,  # compacted: a profile lives until it is forgotten
        "ghl-consumer.parking": "1209600000",
        "ghl-consumer.deliveries": "604800000",  # no personal data: 7 days
    }
    # with partitioned profile state, the stitch topic: profiles in flight, kept as long as
    # the dead letters (it must outlive an outage of the group)
    stitch = consumer_topics(settings.kafka, stitching=True)[-1]
    assert (stitch.name, stitch.config) == (
        "ghl-consumer.stitch",
        {"retention.ms": "1209600000"},
    )
    text = "[kafka]\ndead_letter_retention_ms = 86400000\n"
    settings = load(tmp_path, text, {**ENV, "KAFKA_PARKING_RETENTION_MS": "3600000"})
    assert (settings.kafka.dead_letter_retention_ms, settings.kafka.parking_retention_ms) == (
        86_400_000,
        3_600_000,
    )


def test_the_replay_topic_defaults_after_the_group_and_is_never_a_source_topic(
    tmp_path: Path,
) -> None:
    assert load_settings(None, ENV).kafka.replay_topic == "ghl-consumer.replay"
    text = '[kafka]\ngroup_id = "crm"\n'
    assert load(tmp_path, text, ENV).kafka.replay_topic == "crm.replay"
    settings = load(tmp_path, text, {**ENV, "KAFKA_REPLAY_TOPIC": "crm.again"})
    assert settings.kafka.replay_topic == "crm.again"
    with pytest.raises(ConfigError, match=r"kafka\.replay_topic: events is one of KAFKA_TOPICS"):
        load(tmp_path, '[kafka]\nreplay_topic = "events"\n', {**ENV, "KAFKA_TOPICS": "events"})


def test_the_stitch_topic_defaults_after_the_group_and_names_a_group_of_its_own(
    tmp_path: Path,
) -> None:
    assert load_settings(None, ENV).kafka.stitch_topic == "ghl-consumer.stitch"
    text = '[kafka]\ngroup_id = "crm"\n'
    assert load(tmp_path, text, ENV).kafka.stitch_topic == "crm.stitch"
    settings = load(tmp_path, text, {**ENV, "KAFKA_STITCH_TOPIC": "crm.merge"})
    assert settings.kafka.stitch_topic == "crm.merge"
    for text, message in (
        ('stitch_topic = "events"', "events is one of KAFKA_TOPICS"),
        ('group_id = "crm"\nstitch_topic = "crm"', "crm is the group id"),
        ('stitch_topic = "ghl-consumer.replay"', "is the replay topic"),
        ('stitch_topic = "x"\nprofile_topic = "x"', "x is the profile topic"),
    ):
        with pytest.raises(ConfigError, match=rf"kafka\.stitch_topic: .*{message}: name another"):
            load(tmp_path, f"[kafka]\n{text}\n", {**ENV, "KAFKA_TOPICS": "events"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('group_id = "crm"\nreplay_topic = "crm"', "crm is the group id"),
        ('replay_topic = "ghl-consumer.parking"', "is the parking topic"),
        ('replay_topic = "ghl-consumer.dead-letter"', "is the dead-letter topic"),
        ('replay_topic = "x"\nprofile_topic = "x"', "x is the profile topic"),
        ('replay_topic = "x"\nerasure_topic = "x"', "x is the erasure topic"),
    ],
)
def test_the_replay_topic_names_a_group_of_its_own(
    tmp_path: Path, text: str, message: str
) -> None:
    """The replay feed's group is named after the replay topic: sharing the main group's name
    would put the replay partition back among the source partitions' members."""
    with pytest.raises(ConfigError, match=rf"kafka\.replay_topic: .*{message}: name another"):
        load(tmp_path, f"[kafka]\n{text}\n", ENV)


def test_the_replay_topic_is_co_partitioned_with_one_source_topic_when_state_dir_is_set(
    tmp_path: Path,
) -> None:
    """Issue 19: partitioned profile state (``profiles.state_dir``, one source topic: several
    are refused) co-partitions the replay topic; without a state directory the replay topic
    keeps a consumer group of its own."""
    state = '[profiles]\nstate_dir = "/var/lib/ghl"\n'
    settings = load(tmp_path, state, {**ENV, "KAFKA_TOPICS": "events"})
    assert settings.profiles.state_dir == "/var/lib/ghl"
    assert settings.partitioned_profiles
    with pytest.raises(ConfigError, match=r"profiles\.state_dir: .* exactly one topic"):
        load(tmp_path, state, {**ENV, "KAFKA_TOPICS": "a,b"})
    assert not load(tmp_path, "", {**ENV, "KAFKA_TOPICS": "events"}).partitioned_profiles
    with pytest.raises(ConfigError, match=r"profiles\.state_dir: expected a directory path"):
        load(tmp_path, "[profiles]\nstate_dir = 1\n", ENV)


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[kafka]\nparking_retention_ms = 1000\n", {}, "kafka.parking_retention_ms: expected"),
        ("[kafka]\ndead_letter_retention_ms = '14d'\n", {}, "kafka.dead_letter_retention_ms"),
        ("", {"KAFKA_DEAD_LETTER_RETENTION_MS": "2w"}, "KAFKA_DEAD_LETTER_RETENTION_MS: expected"),
    ],
)
def test_a_retention_below_an_hour_or_not_milliseconds_is_refused(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text, {**ENV, **environ})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8900",
        "http://127.3.2.1",
        "http://[::1]:8900",
        "http://localhost:8900",
        "http://LOCALHOST",
        "https://gw.example",
    ],
)
def test_the_base_url_may_be_plain_http_only_to_a_loopback_host(url: str) -> None:
    assert load_settings(None, {**ENV, "GHL_API_BASE_URL": url}).highlevel.api_base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://gw.example",
        "http://10.0.0.7:8900",
        "http://[::ffff:10.0.0.7]",
        "http://localhost.gw.example",
        "http://128.0.0.1",
        "http://0.0.0.0:8900",
    ],
)
def test_a_plain_http_base_url_to_another_host_stops_start_up(tmp_path: Path, url: str) -> None:
    """The bearer token would travel in clear (issue 15, finding 6)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {**ENV, "GHL_API_BASE_URL": url})
    assert str(caught.value).startswith("GHL_API_BASE_URL: http:// only for a loopback host")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[highlevel]\napi_base_url = '{url}'\n", ENV)
    assert str(caught.value).startswith("highlevel.api_base_url: http:// only for a loopback")


def test_allow_insecure_http_lets_a_plain_http_base_url_through(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "[highlevel]\nallow_insecure_http = true\n",
        {**ENV, "GHL_API_BASE_URL": "http://gw.example:8080/"},
    )
    assert settings.highlevel.api_base_url == "http://gw.example:8080"
    assert settings.highlevel.allow_insecure_http


def test_ghl_allow_insecure_http_overrides_the_file(tmp_path: Path) -> None:
    """docker-compose.yml reaches the sandbox as http://sandbox:8900 on its own network."""
    env = {**ENV, "GHL_API_BASE_URL": "http://sandbox:8900", "GHL_ALLOW_INSECURE_HTTP": "true"}
    assert load_settings(None, env).highlevel.allow_insecure_http
    with pytest.raises(ConfigError, match=r"^GHL_API_BASE_URL: http:// only for a loopback"):
        load(
            tmp_path,
            "[highlevel]\nallow_insecure_http = true\n",
            {**env, "GHL_ALLOW_INSECURE_HTTP": "false"},
        )


def test_the_debugger_has_its_own_loopback_listener_by_default() -> None:
    settings = load_settings(None, {**ENV, "METRICS_HOST": "0.0.0.0"})
    debug = settings.debug
    assert (settings.metrics.host, debug.host, debug.port) == ("0.0.0.0", "127.0.0.1", 9465)
    assert (debug.max_streams, debug.session_seconds, debug.allowed_hosts) == (8, 900, ())
    assert debug.show_personal_data is False
    assert debug.access_token is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "LocalHost"])
def test_a_loopback_debugger_needs_no_token(host: str) -> None:
    assert load_settings(None, {**ENV, "DEBUG_HOST": host}).debug.host == host


def test_debugger_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = """
[debug]
host = "0.0.0.0"
port = 9700
allowed_hosts = ["Debugger.Example.org", "10.0.0.7"]
max_streams = 2
session_seconds = 120
show_personal_data = true
"""
    environ = {**ENV, "DEBUG_ACCESS_TOKEN": "dbg-secret-value"}
    debug = load(tmp_path, text, environ).debug
    assert (debug.host, debug.port, debug.max_streams, debug.session_seconds) == (
        "0.0.0.0", 9700, 2, 120
    )
    assert debug.allowed_hosts == ("debugger.example.org", "10.0.0.7")
    assert debug.show_personal_data is True
    assert debug.access_token is not None
    assert debug.access_token.reveal() == "dbg-secret-value"
    assert "dbg-secret-value" not in repr(debug)
    environ |= {"DEBUG_HOST": "127.0.0.1", "DEBUG_PORT": "0", "DEBUG_ALLOWED_HOSTS": "a, B,,"}
    debug = load(tmp_path, text, environ).debug
    assert (debug.host, debug.port, debug.allowed_hosts) == ("127.0.0.1", 0, ("a", "b"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[debug]\nhost = "0.0.0.0"', "debug.host: 0.0.0.0 is not a loopback address"),
        ("[debug]\nmax_streams = 0", "debug.max_streams: must be at least 1"),
        ("[debug]\nsession_seconds = 5", "debug.session_seconds: must be at least 60"),
        ('[debug]\nshow_personal_data = "yes"', "debug.show_personal_data: expected true or"),
        ("[debug]\nallowed_hosts = [1]", "debug.allowed_hosts: expected a list of non-empty"),
        ("[debug]\naccess_token = \"x\"", "debug.access_token: unknown setting"),
    ],
)
def test_debugger_settings_errors_name_the_field(
    text: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, ENV)
    assert str(caught.value).startswith(message)


def test_create_topics_and_the_start_up_timeout(tmp_path: Path) -> None:
    defaults = load_settings(None, ENV).kafka
    assert (defaults.create_topics, defaults.startup_timeout_seconds) == (True, 60)
    text = "[kafka]\ncreate_topics = false\nstartup_timeout_seconds = 0\n"
    kafka = load(tmp_path, text, ENV).kafka
    assert (kafka.create_topics, kafka.startup_timeout_seconds) == (False, 0)
    environ = {**ENV, "KAFKA_CREATE_TOPICS": "TRUE", "KAFKA_STARTUP_TIMEOUT_SECONDS": "15"}
    kafka = load(tmp_path, text, environ).kafka
    assert (kafka.create_topics, kafka.startup_timeout_seconds) == (True, 15)
    assert [(u.name, u.operations) for u in topic_uses(kafka)] == [
        ("events", ("Read",)),
        ("ghl-consumer.dead-letter", ("Write",)),
        ("ghl-consumer.replay", ("Read",)),
        ("ghl-consumer.deliveries", ("Write",)),
        ("ghl-consumer.parking", ("Read", "Write")),
        ("ghl-consumer.profiles", ("Read", "Write")),
    ]
    assert topic_uses(kafka, stitching=True)[-1] == TopicUse(
        "ghl-consumer.stitch", ("Read", "Write")
    )


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[kafka]\ncreate_topics = 'no'\n", {}, "kafka.create_topics: expected true or false"),
        ("", {"KAFKA_CREATE_TOPICS": "0"}, "KAFKA_CREATE_TOPICS: expected true or false"),
        ("[kafka]\nstartup_timeout_seconds = -1\n", {}, "kafka.startup_timeout_seconds"),
        ("", {"KAFKA_STARTUP_TIMEOUT_SECONDS": "1m"}, "KAFKA_STARTUP_TIMEOUT_SECONDS: expected"),
    ],
)
def test_bad_create_topics_or_start_up_timeout_is_refused(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text, {**ENV, **environ})


def test_profile_state_is_whole_by_default_and_partitioned_with_a_state_dir(
    tmp_path: Path,
) -> None:
    assert load_settings(None, ENV).profiles.state_dir == ""
    settings = load(
        tmp_path, '[profiles]\nstate_dir = "/var/lib/ghl"\ncache_entries = 5000\n', ENV
    )
    assert settings.profiles.state_dir == "/var/lib/ghl"
    assert settings.profiles.cache_entries == 5000
    with pytest.raises(ConfigError, match=r"profiles\.cache_entries: expected a whole number"):
        load(tmp_path, "[profiles]\ncache_entries = 0\n", ENV)
    with pytest.raises(ConfigError, match=r"profiles\.state_dir: expected a directory"):
        load(tmp_path, "[profiles]\nstate_dir = 3\n", ENV)


def test_partitioned_profile_state_refuses_several_input_topics(tmp_path: Path) -> None:
    text = '[profiles]\nstate_dir = "/var/lib/ghl"\n[kafka]\ntopics = ["web", "app"]\n'
    with pytest.raises(ConfigError, match=r"exactly one topic in kafka\.topics \(it has 2: web"):
        load(tmp_path, text, ENV)
    assert load(tmp_path, '[kafka]\ntopics = ["web", "app"]\n', ENV).kafka.topics == (
        "web",
        "app",
    )
