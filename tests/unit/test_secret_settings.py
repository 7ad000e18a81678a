"""Kafka secrets in the settings: which ``[kafka.librdkafka]`` values are kept as ``Secret``,
and which commands read them (issue 9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.config import Secret, load_settings
from consumer.errors import ConfigError

ENV = {"GHL_LOCATION_ID": "L1", "GHL_ACCESS_TOKEN": "token"}
VALUE = "literal-Canary-7f3e"


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    ],
)
def test_librdkafka_sensitive_values_stay_secret_even_when_written_literally(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[kafka.librdkafka]\n"{key}" = "{VALUE}"\n"ssl.ca.location" = "/ca.pem"\n')
    settings = load_settings(str(path), ENV)
    assert isinstance(settings.kafka.librdkafka[key], Secret)
    assert VALUE not in repr(settings)
    assert VALUE not in str(settings.kafka.librdkafka)
    assert settings.kafka.extra_settings() == {key: VALUE, "ssl.ca.location": "/ca.pem"}


def test_operator_commands_read_kafka_secrets_without_highlevel_tokens(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[kafka.librdkafka]\n"sasl.password" = { env = "KAFKA_PW" }\n'
        '[[integrations]]\nid = "a"\nlocation_id = "L1"\naccess_token = { env = "TOKEN_A" }\n'
    )
    # dlq and audit: the Kafka password is read, the HighLevel token is not needed.
    settings = load_settings(str(path), {"KAFKA_PW": "pw"}, read_secrets=False, kafka_secrets=True)
    assert settings.kafka.extra_settings() == {"sasl.password": "pw"}
    with pytest.raises(ConfigError, match="was not read"):
        settings.integrations[0].access_token.reveal()
    missing = "kafka.librdkafka.sasl.password: environment variable KAFKA_PW is not set"
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_settings(str(path), {}, read_secrets=False, kafka_secrets=True)
    # The dry run reads neither: nothing needs to be set.
    dry = load_settings(str(path), {}, read_secrets=False)
    with pytest.raises(ConfigError, match="environment variable KAFKA_PW was not read"):
        dry.kafka.extra_settings()
