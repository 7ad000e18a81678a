"""consumer.observe.logs: one pipeline for every record: fields as keys, masking, librdkafka."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from consumer.commands.preamble import configure_logging as command_logging
from consumer.config import Secret
from consumer.kafka.producer import KafkaProducer
from consumer.observe.logs import (
    LIBRDKAFKA_LOGGER,
    configure_logging,
    log_format,
    mask_string,
)

EMAIL, PHONE, TOKEN = "jane.doe@example.com", "+14155550142", "pit-Canary/4f9e+7Qz="


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, timestamps=True, stream=stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_and_carry_the_extra_fields_as_keys() -> None:
    stream = _capture("json")
    logging.getLogger("consumer.kafka.source").info(
        "kafka partitions assigned", extra={"partitions": ["events[0]", "events[3]"]}
    )
    logging.getLogger("consumer.engine").warning("retry %d of %s", 2, "loc-1")
    first, second = _json_lines(stream)
    assert first["message"] == "kafka partitions assigned"
    assert first["partitions"] == ["events[0]", "events[3]"]
    assert first["level"] == "info"
    assert first["logger"] == "consumer.kafka.source"
    assert str(first["timestamp"]).endswith("Z")
    assert second["message"] == "retry 2 of loc-1"
    assert second["level"] == "warning"


def test_an_extra_field_named_event_keeps_the_message() -> None:
    stream = _capture("json")
    logging.getLogger("x").warning("Redis unavailable", extra={"event": "ratelimit_fallback"})
    (line,) = _json_lines(stream)
    assert line["message"] == "Redis unavailable"
    assert line["event"] == "ratelimit_fallback"


def test_console_lines_show_the_fields() -> None:
    stream = _capture("console")
    logging.getLogger("consumer.kafka.source").info(
        "kafka partitions assigned", extra={"partitions": ["events[0]"]}
    )
    line = stream.getvalue()
    assert "kafka partitions assigned" in line
    assert "partitions=['events[0]']" in line
    assert "[info" in line
    assert "\x1b[" not in line  # no colours off a terminal


def test_console_is_coloured_on_a_terminal_only() -> None:
    stream = _Terminal()
    configure_logging("INFO", "console", stream=stream)
    logging.getLogger("x").info("hello")
    assert "\x1b[" in stream.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_personal_data_and_tokens_are_masked_in_the_message_and_every_field(fmt: str) -> None:
    stream = _capture(fmt)
    logging.getLogger("consumer.engine").warning(
        "upsert for %s (%s) refused; sent Authorization: Bearer %s",
        EMAIL,
        PHONE,
        TOKEN,
        extra={
            "email": EMAIL,
            "contact": {"phone": PHONE, "emails": [EMAIL]},
            "access_token": TOKEN,
            "secret": Secret(TOKEN, "test"),
            "redis": f"redis://:{TOKEN}@redis:6379/0",
            "note": f"token={TOKEN}",
        },
    )
    try:
        raise ValueError(f"HighLevel refused {EMAIL}")
    except ValueError:
        logging.getLogger("consumer.engine").exception("failed for %s", PHONE)
    text = stream.getvalue()
    for clear in (EMAIL, PHONE, TOKEN, "4f9e", "4155550142"):
        assert clear not in text, (clear, text)
    assert "j***@example.com" in text
    assert "+1******0142" in text
    assert "Bearer ***" in text
    if fmt == "json":
        first, second = _json_lines(stream)
        assert first["email"] == "j***@example.com"
        assert first["contact"] == {"phone": "+1******0142", "emails": ["j***@example.com"]}
        assert first["access_token"] == first["secret"] == "***"
        assert first["note"] == "token=***"
        assert "hunter" not in str(first["redis"])
        assert "ValueError: HighLevel refused j***@example.com" in str(second["exception"])


def test_numbers_and_the_time_are_left_alone() -> None:
    stream = _capture("json")
    logging.getLogger("x").info(
        "committed", extra={"offset": 123456789, "partition": 3, "lag_seconds": 1.5}
    )
    (line,) = _json_lines(stream)
    assert line["offset"] == 123456789
    assert line["lag_seconds"] == 1.5
    assert "*" not in str(line["timestamp"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET with Bearer abc.def-ghi", "GET with Bearer ***"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic ***"),
        ("sasl.password=s3cr3t and more", "sasl.password=*** and more"),
        ("amqp://user:pw@host:5672/vhost", "amqp:/***@host:5672/vhost"),
        ("basic configuration is fine", "basic configuration is fine"),
        ("the token expired", "the token expired"),
        # digits inside a word are a name, not a phone: topics, group ids, times
        ("assigned t-6e512121905e[0]", "assigned t-6e512121905e[0]"),
        ("at 2026-12-06T18:29:25Z", "at 2026-12-06T18:29:25Z"),
        ("call +1 415 555 0142.", "call +1*********0142."),
    ],
)
def test_mask_string(text: str, expected: str) -> None:
    assert mask_string(text) == expected


def test_a_librdkafka_line_arrives_as_a_structured_record() -> None:
    stream = _capture("json")
    rdkafka = logging.getLogger(LIBRDKAFKA_LOGGER)
    rdkafka.log(
        logging.ERROR,
        "%s [%s] %s",
        "FAIL",
        "rdkafka#consumer-1",
        "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to "
        "ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
    )
    rdkafka.log(
        logging.WARNING,
        "%s [%s] %s",
        "CONFWARN",
        "rdkafka#producer-2",
        "[thrd:app]: Configuration property sasl.password=hunter2 is ignored",
    )
    broker, app = _json_lines(stream)
    assert broker["message"] == (
        "Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"
    )
    assert broker["facility"] == "FAIL"
    assert broker["client"] == "rdkafka#consumer-1"
    assert broker["broker"] == "127.0.0.1:9092/bootstrap"
    assert broker["level"] == "error"
    assert app["facility"] == "CONFWARN"
    assert "broker" not in app
    assert app["message"] == "Configuration property sasl.password=*** is ignored"


async def test_a_real_librdkafka_client_logs_through_the_pipeline() -> None:
    stream = _capture("json")
    producer = KafkaProducer(bootstrap="127.0.0.1:1", extra={"debug": "broker"})
    try:
        for _ in range(50):
            if '"broker"' in stream.getvalue():
                break
            await asyncio.sleep(0.1)
    finally:
        await producer.close()
    # librdkafka's own lines; error_cb's ("kafka producer error: ...") are the client's.
    lines = [
        line
        for line in _json_lines(stream)
        if line["logger"] == LIBRDKAFKA_LOGGER and "producer error" not in str(line["message"])
    ]
    assert lines, stream.getvalue()
    assert all("facility" in line and "client" in line for line in lines)
    assert any(line.get("broker") == "127.0.0.1:1/bootstrap" for line in lines)
    assert not any(str(line["message"]).startswith("[thrd:") for line in lines)


def test_the_format_is_chosen_by_flag_then_environment_then_terminal() -> None:
    assert log_format("console", {"LOG_FORMAT": "json"}, io.StringIO()) == "console"
    assert log_format(None, {"LOG_FORMAT": "JSON"}, _Terminal()) == "json"
    assert log_format(None, {}, _Terminal()) == "console"
    assert log_format(None, {}, io.StringIO()) == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT: 'xml' is not one of json, console"):
        log_format(None, {"LOG_FORMAT": "xml"}, io.StringIO())


def test_a_bad_log_format_in_the_environment_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exit_:
        command_logging("INFO")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "ghl-consumer: configuration error: LOG_FORMAT: 'xml' is not one of json, console\n"
    )
