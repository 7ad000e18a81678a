"""Every command's log on stderr, through one structlog pipeline: JSON lines or console lines.

The code base logs with the standard library (``logging.getLogger(__name__)``, fields passed
as ``extra=``); ``configure_logging`` puts structlog's ``ProcessorFormatter`` on the root
handler, so every record, ours and librdkafka's, takes the same path:

1. ``librdkafka_fields``: a line of librdkafka (the ``consumer.kafka.librdkafka`` logger, which
   every Kafka client is given as its ``logger``) becomes its text plus ``facility``, ``client``
   and, when it is about one broker, ``broker``, instead of one ``FAC [client] text`` string.
2. The ``extra=`` fields become keys (``ExtraAdder``); ``level``, ``logger`` and, for the
   long-running commands, an ISO 8601 UTC ``timestamp`` are added; an exception becomes the
   ``exception`` text.
3. ``mask``: the one place personal data and secrets are masked. Every line passes it, its
   message and every field (nested lists and mappings too): emails and phone numbers as
   ``consumer.core.normalise.mask_text`` masks them; ``Bearer`` and ``Basic`` values, a URL's
   password and ``token=`` / ``password=`` / ``secret=`` pairs become ``***``; a field whose
   name says it holds a credential (``SENSITIVE_KEY``) is ``***`` whatever its value.
4. ``JSONRenderer`` (one object per line, the message under ``message``) or ``ConsoleRenderer``
   (aligned, coloured only on a terminal).

``LOG_FORMATS``: ``json`` or ``console``; ``log_format`` picks ``--log-format``, else
``$LOG_FORMAT``, else console when stderr is a terminal and JSON otherwise (a container).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from consumer.core.normalise import mask_text

LOG_FORMATS: Final = ("json", "console")
LIBRDKAFKA_LOGGER: Final = "consumer.kafka.librdkafka"
MESSAGE_KEY: Final = "message"
# A field with one of these in its name holds a credential: its value is never shown.
SENSITIVE_KEY: Final = re.compile(
    r"token|password|passwd|secret|authorization|api_?key|credential|cookie", re.IGNORECASE
)
# Added by the pipeline itself: never personal, and a timestamp looks like a phone number.
_OWN_KEYS: Final = frozenset(("timestamp", "level", "logger", "facility", "client", "broker"))
_SECRETS_IN_TEXT: Final = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s,;\"']+"), r"\1 ***"),
    (re.compile(r"\b(Basic)\s+[A-Za-z0-9+/]{8,}={0,2}"), r"\1 ***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@"), r"\1***@"),
    (
        re.compile(
            r"(?i)\b([\w.-]*(?:token|password|passwd|secret|api_?key)[\w.-]*\s*=\s*)"
            r"(?!\*\*\*)[^\s,;&\"']+"
        ),
        r"\1***",
    ),
)
# librdkafka's own text: "[thrd:<thread>]: <broker>: <text>"; the thread of a broker is named
# after it ("127.0.0.1:9092/bootstrap", "sasl_ssl://kafka-1:9093/1").
_RDKAFKA_TEXT: Final = re.compile(r"^\[thrd:(?P<thread>[^\]]*)\]:\s*(?P<rest>.*)$", re.DOTALL)
_BROKER: Final = re.compile(r"^(?:[a-z_]+://)?[^\s/]+:\d+/\w+$")


def log_format(requested: str | None, environ: Mapping[str, str], stream: TextIO) -> str:
    """The format to use: ``requested`` (``--log-format``), else ``environ["LOG_FORMAT"]``,
    else ``console`` when ``stream`` is a terminal and ``json`` otherwise. Raises ValueError
    for a value that is not one of ``LOG_FORMATS`` (any case)."""
    chosen = requested or environ.get("LOG_FORMAT") or ""
    if not chosen:
        return "console" if stream.isatty() else "json"
    if chosen.lower() not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT: {chosen!r} is not one of {', '.join(LOG_FORMATS)}")
    return chosen.lower()


def mask_string(text: str) -> str:
    """``text`` with secrets (``Bearer`` values, URL passwords, ``token=...`` pairs) replaced
    by ``***`` and emails and phone numbers masked (``mask_text``)."""
    for pattern, replacement in _SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    return mask_text(text)


def _masked(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_string(value)
    if isinstance(value, Mapping):
        return {
            str(k): "***" if SENSITIVE_KEY.search(str(k)) else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(item) for item in value]
    return mask_string(str(value))  # a Secret prints as ***; anything else by its text


def mask(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The masking processor: every field of ``event_dict`` (the message included) masked,
    credential-named fields replaced by ``***``; the pipeline's own fields are kept."""
    for key, value in event_dict.items():
        if key in _OWN_KEYS:
            continue
        event_dict[key] = "***" if SENSITIVE_KEY.search(key) else _masked(value)
    return event_dict


def librdkafka_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A librdkafka line (``logger.log(level, "%s [%s] %s", facility, client, text)``) as its
    text with ``facility``, ``client`` and ``broker`` (when the text names one) as fields;
    other records pass unchanged."""
    record = event_dict.get("_record")
    args = event_dict.pop("positional_args", None)  # the formatter passes them (and only here)
    if not isinstance(record, logging.LogRecord) or record.name != LIBRDKAFKA_LOGGER:
        return event_dict
    if record.msg != "%s [%s] %s" or not isinstance(args, tuple) or len(args) != 3:
        return event_dict  # one of our own lines on that logger (error_cb)
    facility, client, text = (str(arg) for arg in args)
    event_dict["facility"], event_dict["client"] = facility, client
    match = _RDKAFKA_TEXT.match(text)
    if match:
        text = match["rest"]
        head, sep, tail = text.partition(": ")
        if sep and _BROKER.match(head):
            event_dict["broker"], text = head, tail
        elif _BROKER.match(match["thread"]):
            event_dict["broker"] = match["thread"]
    event_dict[MESSAGE_KEY] = text
    return event_dict


def _pipeline(fmt: str, timestamps: bool, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    pre_chain: list[Processor] = [
        structlog.processors.EventRenamer(MESSAGE_KEY),
        librdkafka_fields,
        structlog.stdlib.ExtraAdder(),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    if timestamps:
        pre_chain.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=colors,
            event_key=MESSAGE_KEY,
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # the traceback's text is masked too
            mask,
            renderer,
        ],
    )


def configure_logging(
    level: str, fmt: str, *, timestamps: bool = False, stream: TextIO | None = None
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt`` (one of
    ``LOG_FORMATS``) through the pipeline above; with ``timestamps`` (the long-running
    commands) each line carries its time. Replaces any handler the root logger had."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(_pipeline(fmt, timestamps, colors=fmt == "console" and out.isatty()))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

