"""No secret leaves the consumer, and personal data reaches its logs only masked (issue 9).

One ``ghl-consumer run`` at its most verbose (``--log-level DEBUG`` and librdkafka's ``debug``
contexts for configuration and security) holds six secrets: a HighLevel token from a file,
another from the environment, ``DEBUG_ACCESS_TOKEN``, the SASL password of its SASL_SSL broker,
the password in ``REDIS_URL`` (a Redis that refuses connections) and the profile changelog's
encryption key (so the profile topic must hold no email either). It is driven through the
error paths: 5xx answers, hangs and reset connections; a 401 for one integration (parking); a
422 (dead letter); malformed records (dead letter); HighLevel refusing connections; SIGTERM.
Bad configurations add start-up errors (the exceptions an operator sees). Then every output
channel is collected (logs, /metrics, /healthz, /readyz on the metrics listener; the debugger's
own listener: its login form and answers, page, JSON and SSE stream; the dead-letter, parking
and profile topics with their headers, ``dlq list``, ``dlq replay --dry-run``, ``audit``,
``map``) and searched for each secret in the forms it could take (raw, URL-encoded, base64 alone
or inside a ``Bearer`` or basic-auth value); the logs are searched for every input email address
and phone number, which may appear only masked, and the debugger for the names and user ids,
which it hides.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web
from confluent_kafka import Message

from consumer.highlevel.client import HighLevelClient
from consumer.observe.web import SESSION_COOKIE
from tests.integration.consumer_harness import (
    ProcessLog,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    run_command,
    start_consumer,
    start_sandbox,
    stop_process,
)
from tests.integration.secure_kafka import SASL_PASSWORD, SecuredBroker
from tests.kafka_broker import ROOT, create_topic, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

OK_LOCATION, BAD_LOCATION = "loc-leak-ok", "loc-leak-bad"
OK_TOKEN = "pit-CanaryOk/4f9e+7Qz="  # integration "ok", read from a file
BAD_TOKEN = "pit-CanaryBad/8c1d+2Wx="  # integration "bad", from the environment; HighLevel: 401
DEBUG_TOKEN = "dbg-CanaryDebug/5a7b+9Ky="
REDIS_PASSWORD = "redis-CanaryRedis/3e8f+1Tm="
PROFILE_KEY = base64.b64encode(b"CanaryProfileKey/6d2c+8Ln=012345").decode()  # 32 bytes
SECRETS = {
    "HighLevel token (file)": OK_TOKEN,
    "HighLevel token (environment)": BAD_TOKEN,
    "DEBUG_ACCESS_TOKEN": DEBUG_TOKEN,
    "SASL password": SASL_PASSWORD,
    "Redis password": REDIS_PASSWORD,
    "profile encryption key": PROFILE_KEY,
}


def leak_forms(secret: str) -> set[str]:
    """``secret`` as it would read if it leaked raw, URL-encoded, or base64-encoded on its own,
    after ``Bearer `` or as a basic-auth password. Base64 inside a longer text depends on the
    alignment, so each of the three alignments contributes the characters that only the secret
    decides (the first and last block may mix with its neighbours)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    for text in (secret, f"Bearer {secret}", f":{secret}"):
        forms.add(base64.b64encode(text.encode()).decode())
    raw = secret.encode()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        forms.add(encoded[4 if shift else 0 : -4])
    return forms


# -- input: identity events with personal data, and records that cannot be delivered ----------

PEOPLE = [  # (user, email, phone as typed, its digits)
    (f"lk-{i}", f"leak.canary{i}@example.com", f"+1 (415) 555-01{i:02d}", f"415555010{i}")
    for i in range(8)
]
PARKED = [(f"pk-{i}", f"parked.person{i}@example.com", f"+1 415 555 02{i:02d}", f"41555502{i:02d}")
          for i in range(2)]
REJECTED_EMAIL = "reject.me@example.com"  # its plan is not in the picklist: HighLevel 422s
PICKLIST = {"customFields": [
    {"id": "cfPlan", "dataType": "SINGLE_OPTIONS", "picklistOptions": ["gold", "silver"]}
]}
BROKEN_EMAIL = "broken.json@example.com"
EMAILS = [p[1] for p in PEOPLE + PARKED] + [REJECTED_EMAIL, BROKEN_EMAIL]
# Each phone number as typed, in E.164, and in the usual national spellings; masked, only its
# last four digits show (+1******0142).
PHONES = [
    form
    for _, _, typed, d in PEOPLE + PARKED
    for form in (typed, f"+1{d}", d, f"{d[:3]}-{d[3:6]}-{d[6:]}", f"({d[:3]}) {d[3:6]}-{d[6:]}")
]


def identify(user: str, app: str, email: str, phone: str, **traits: str) -> tuple[bytes, bytes]:
    event = {
        "type": "identify",
        "userId": user,
        "messageId": f"m-{uuid.uuid4().hex}",
        "traits": {"email": email, "phone": phone, "firstName": "Canary", **traits},
        "context": {"app": {"name": app}},
    }
    return user.encode(), orjson.dumps(event)


FIRST_BATCH = [
    *(identify(user, "shop", email, phone) for user, email, phone, _ in PEOPLE[:6]),
    *(identify(user, "legacy", email, phone) for user, email, phone, _ in PARKED),
    identify("rj-1", "shop", REJECTED_EMAIL, "", plan="platinum"),
    (b"broken", b'{"type": "identify", "userId": "broken", "traits": {"email": "'
     + BROKEN_EMAIL.encode() + b'"'),
    (b"typed", orjson.dumps({"type": "identify", "userId": "typed",  # traits not an object
                             "traits": [12345, PEOPLE[7][2]],
                             "context": {"app": {"name": "shop"}}})),
    (b"binary", b"\xff\xfe\x00not json"),
]
# Produced while HighLevel refuses connections.
SECOND_BATCH = [identify(user, "shop", email, phone) for user, email, phone, _ in PEOPLE[6:]]


def config_text(kafka: SecuredBroker, topic: str, group: str, token_file: Path) -> str:
    return (
        "[kafka]\n"
        f'topics = ["{topic}"]\n'
        f'group_id = "{group}"\n'
        + kafka.librdkafka_table('{ env = "KAFKA_SASL_PASSWORD" }')
        + '"debug" = "conf,security,broker"\n'
        + f"""
[delivery]
timeout_seconds = 1
retry_base_seconds = 0.05
retry_max_seconds = 0.3
unauthorized_probe_seconds = 1
rate_burst = 1000
rate_sustained = 1000

[engine]
coalesce_window_ms = 0
progress_interval_seconds = 1

[profiles]
encryption_key_id = "k1"
encryption_keys = [{{ id = "k1", key = {{ env = "PROFILE_KEY_K1" }} }}]

[[integrations]]
id = "ok"
location_id = "{OK_LOCATION}"
access_token = {{ file = "{token_file}" }}
default_phone_region = "US"

[[integrations.fields.custom]]
id = "cfPlan"
source = "traits.plan"

[integrations.routing]
field = "context.app.name"
values = ["shop"]

[[integrations]]
id = "bad"
location_id = "{BAD_LOCATION}"
access_token = {{ env = "GHL_TOKEN_BAD" }}

[integrations.routing]
field = "context.app.name"
values = ["legacy"]
"""
    )


# -- reading the channels -----------------------------------------------------------------------


def metric(exposition: str, series: str) -> float:
    """The value of one series (``name{labels}`` exactly as exposed) in a /metrics text; 0 when
    absent."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_for_metrics(
    http: aiohttp.ClientSession, base: str, done: Callable[[str], bool], what: str
) -> None:
    try:
        async with asyncio.timeout(30):
            while True:
                async with http.get(f"{base}/metrics") as response:
                    if done(await response.text()):
                        return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"waited 30 s for {what}") from None


async def wait_for_commits(kafka: SecuredBroker, group: str, topic: str, log: ProcessLog) -> None:
    ends = end_offsets(kafka.bootstrap, topic, 1)
    try:
        async with asyncio.timeout(30):
            while committed_offsets(kafka.bootstrap, group, topic, 1) != ends:
                assert log.process.returncode is None, log.text()[-3000:]
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"offsets not committed in 30 s:\n{log.text()[-3000:]}") from None


async def follow_stream(
    http: aiohttp.ClientSession, url: str, headers: Mapping[str, str], into: list[str]
) -> None:
    """Append the debugger's Server-Sent Events to ``into`` until cancelled."""
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout()) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            into.append(chunk.decode(errors="replace"))


def records_text(messages: Iterable[Message]) -> str:
    """Keys, values and headers of ``messages`` as one text (bytes decoded leniently)."""
    parts = []
    for message in messages:
        parts += [message.key() or b"", message.value() or b""]
        for name, value in message.headers() or []:
            parts += [name.encode(), value or b""]
    return "\n".join(part.decode(errors="replace") for part in parts)


def topic_text(bootstrap: str, topic: str) -> tuple[int, str]:
    """How many records ``topic`` (one partition) holds, and all of them as text."""
    count = end_offsets(bootstrap, topic, 1)[0]
    messages = read_all(bootstrap, topic, expect=count)
    assert len(messages) == count, topic
    return count, records_text(messages)


def map_output(config: Path, env: Mapping[str, str], lines: bytes) -> str:
    """``ghl-consumer map`` (reads stdin, which ``run_command`` does not feed) on ``lines``."""
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "map", "--config", str(config)],
        input=lines,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode() + result.stderr.decode()


# -- the test -----------------------------------------------------------------------------------


async def test_no_secret_in_any_output_channel_and_no_personal_data_in_the_logs(
    secure_kafka: SecuredBroker, tmp_path: Path
) -> None:
    kafka = secure_kafka
    topic = create_topic(kafka.bootstrap)
    group = f"leak-{uuid.uuid4().hex[:8]}"
    token_file = tmp_path / "ok-token"
    token_file.write_text(OK_TOKEN + "\n")
    config = tmp_path / "config.toml"
    config.write_text(config_text(kafka, topic, group, token_file))
    metrics_port, debug_port = free_port(), free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    debug = f"http://127.0.0.1:{debug_port}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.secure_bootstrap,
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "GHL_TOKEN_BAD": BAD_TOKEN,
        "PROFILE_KEY_K1": PROFILE_KEY,
        "DEBUG_ACCESS_TOKEN": DEBUG_TOKEN,
        "REDIS_URL": f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{free_port()}/0",
        "METRICS_PORT": str(metrics_port),
        "DEBUG_PORT": str(debug_port),
    }
    # BAD_LOCATION's token at the sandbox is another one: the consumer's gets 401.
    locations = {OK_LOCATION: OK_TOKEN, BAD_LOCATION: "pit-the-sandbox-knows-another"}
    state = tmp_path / "sandbox.json"
    # Every output channel, by what may appear there: personal data in the Kafka topics and the
    # dry run's payloads; elsewhere (logs, web server, dlq and audit reports) only masked.
    channels: dict[str, str] = {}
    shown: dict[str, str] = {}
    logs: dict[str, str] = {}

    produce(kafka.bootstrap, topic, FIRST_BATCH)
    # Every request fails (5xx, hang, or reset after applying) until each kind was retried.
    fields = tmp_path / "custom-fields.json"
    fields.write_bytes(orjson.dumps(PICKLIST))
    sandbox, url = await start_sandbox(
        locations, "--state-file", str(state), "--seed", "7", "--custom-fields", str(fields),
        "--fail-rate", "0.34", "--hang-rate", "0.33", "--reset-rate", "0.33",
    )
    consumer = await start_consumer(
        {**env, "GHL_API_BASE_URL": url}, "--config", str(config), "--log-level", "DEBUG"
    )
    log = ProcessLog(consumer)
    stream: list[str] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with asyncio.timeout(30):
                await log.wait_for("event debugger on")
            # The login form's answer carries the session cookie (aiohttp's jar refuses IPs).
            async with http.get(f"{debug}/debug") as response:
                assert response.status == 401
                shown["/debug login form"] = await response.text()
            async with http.post(
                f"{debug}/debug", data={"token": DEBUG_TOKEN}, allow_redirects=False
            ) as response:
                assert response.status == 303
                shown["POST /debug"] = await response.text() + str(response.headers)
                cookie = f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE].value}"
            session = {"Cookie": cookie}
            follower = asyncio.create_task(
                follow_stream(http, f"{debug}/debug/events", session, stream)
            )

            def retried(*reasons: str) -> Callable[[str], bool]:
                return lambda text: all(
                    metric(text, f'ghl_retries_total{{integration="ok",reason="{r}"}}') >= 1
                    for r in reasons
                )

            await wait_for_metrics(
                http, base, retried("server_error", "timeout", "connection"), "5xx/hang/reset"
            )
            async with http.put(
                f"{url}/_sandbox/faults", json={"failRate": 0, "hangRate": 0, "resetRate": 0}
            ) as response:
                assert response.status == 200, await response.text()
            await wait_for_commits(kafka, group, topic, log)

            # HighLevel refuses connections while new events arrive; then it is back.
            await stop_process(sandbox)  # SIGTERM: it saves its contacts to the state file
            async with http.get(f"{base}/metrics") as response:
                series = 'ghl_retries_total{integration="ok",reason="connection"}'
                before = metric(await response.text(), series)
            produce(kafka.bootstrap, topic, SECOND_BATCH)
            await wait_for_metrics(
                http, base, lambda text: metric(text, series) > before, "refused connections"
            )
            sandbox, url = await start_sandbox(
                locations, "--state-file", str(state), port=urlsplit(url).port or 0
            )
            await wait_for_commits(kafka, group, topic, log)

            for path in ("/metrics", "/healthz", "/readyz"):
                async with http.get(base + path) as response:
                    shown[path] = await response.text()
            bearer = {"Authorization": f"Bearer {DEBUG_TOKEN}"}
            for path in ("/debug", "/debug/deliveries.json?limit=1000"):
                async with http.get(debug + path, headers=bearer) as response:
                    assert response.status == 200
                    shown[path] = await response.text()
                async with http.get(debug + path, headers=session) as response:
                    assert response.status == 200
                    shown[f"{path} (session)"] = await response.text()
                async with http.get(base + path, headers=bearer) as response:
                    assert response.status == 404  # the metrics listener has no debugger
            for path in ("/debug", "/debug/deliveries.json", "/debug/events"):
                # no token, a wrong one, the right one in the URL
                for offered, status in (({}, 401), ({"token": "wrong"}, 400),
                                        ({"token": DEBUG_TOKEN}, 400)):
                    async with http.get(debug + path, params=offered) as response:
                        assert response.status == status, path
                        shown[f"{path} refused {offered}"] = await response.text()
            async with http.post(f"{debug}/debug", data={"token": "wrong"}) as response:
                assert response.status == 401
                shown["POST /debug wrong"] = await response.text() + str(response.headers)
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            shown["/debug/events"] = "".join(stream)

            # The operator commands, with the same environment.
            cli_env = {k: v for k, v in env.items() if k != "METRICS_PORT"}
            cli_env["GHL_API_BASE_URL"] = url  # forget --delete-contact reaches the sandbox
            for args in (
                ("dlq", "list"),
                ("dlq", "list", "--json"),
                ("dlq", "replay", "--dry-run", "--from-beginning"),
                ("audit", "--sandbox", url),
                ("forget", "--email", EMAILS[0], "--delete-contact"),  # the erasure path
            ):
                code, out, err = await run_command(cli_env, *args, "--config", str(config))
                assert code in (0, 1), err[-2000:]
                name = " ".join(arg for arg in args if arg != url)
                shown[name] = out
                logs[f"{name} (stderr)"] = err
    finally:
        await stop_process(consumer, signal.SIGTERM)
        await stop_process(sandbox)
    code = await log.finished()
    logs["run (stderr)"] = log.text()
    assert consumer.stdout is not None
    logs["run (stdout)"] = (await consumer.stdout.read()).decode(errors="replace")
    assert code == 0, log.text()[-3000:]

    plain = kafka.bootstrap
    dead_letters, channels["dead-letter topic"] = topic_text(plain, f"{group}.dead-letter")
    parked, channels["parking topic"] = topic_text(plain, f"{group}.parking")
    _, channels["profile changelog"] = topic_text(plain, f"{group}.profiles")
    _, shown["erasure topic"] = topic_text(plain, f"{group}.erasures")  # no personal data
    channels["map"] = await asyncio.to_thread(
        map_output, config, env, b"\n".join(value for _, value in FIRST_BATCH + SECOND_BATCH)
    )

    # Start-up errors: each names the problem, none shows a secret.
    for name, text, extra_env, expected in (
        ("literal token in the file",
         config.read_text().replace(f'{{ file = "{token_file}" }}', f'"{OK_TOKEN}"'),
         {}, "not the secret itself"),
        ("invalid TOML next to a token",
         config.read_text().replace(f'{{ file = "{token_file}" }}', f'"{OK_TOKEN}'),
         {}, "invalid TOML"),
        ("unknown librdkafka property holding a secret",
         config.read_text().replace(
             '"debug" =', '"sasl.passwd" = { env = "KAFKA_SASL_PASSWORD" }\n"debug" ='
         ),
         {}, "sasl.passwd"),
        ("unbindable metrics address", config.read_text(), {"METRICS_HOST": "192.0.2.1"},
         "cannot listen on 192.0.2.1"),
        ("unbindable debugger address", config.read_text(), {"DEBUG_HOST": "192.0.2.1"},
         "debug.host/port (DEBUG_HOST/DEBUG_PORT): cannot listen on 192.0.2.1"),
        ("profile key of the wrong length", config.read_text(),
         {"PROFILE_KEY_K1": PROFILE_KEY[:-8]}, "profiles.encryption_keys[0].key"),
        ("debugger facing the network without a token", config.read_text(),
         {"DEBUG_HOST": "0.0.0.0", "DEBUG_ACCESS_TOKEN": ""},
         "DEBUG_HOST: 0.0.0.0 is not a loopback address"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        run_env = {
            **env, "GHL_API_BASE_URL": url, "METRICS_PORT": "0", "DEBUG_PORT": "0", **extra_env
        }
        code, out, err = await run_command(
            run_env, "run", "--config", str(bad), "--log-level", "DEBUG", seconds=60
        )
        assert code == 2, (name, err[-2000:])
        assert expected in out + err, (name, err[-2000:])
        logs[f"start-up error: {name}"] = out + err

    everything = {**channels, **shown, **logs}
    leaks = sorted(
        f"{secret_name} in {channel}"
        for channel, text in everything.items()
        for secret_name, secret in SECRETS.items()
        if any(form in text for form in leak_forms(secret))
    )
    assert not leaks, leaks
    unmasked = sorted(
        f"{value} in {channel}"
        for channel, text in {**shown, **logs}.items()
        for value in [*EMAILS, *PHONES]
        if value.lower() in text.lower()
    )
    assert not unmasked, unmasked
    at_rest = [e for e in EMAILS if e.lower() in channels["profile changelog"].lower()]
    assert not at_rest, at_rest  # the profile values are encrypted
    assert "lk-0" in channels["profile changelog"]  # its keys are not: it was read
    debugger_shown = {k: v for k, v in shown.items() if "debug" in k.lower()}
    hidden = sorted(
        f"{value} in {channel}"
        for channel, text in debugger_shown.items()
        for value in ["Canary", *(p[0] for p in PEOPLE + PARKED)]
        if value in text
    )
    assert not hidden, hidden

    # The channels carried what they should, so finding nothing in them means something.
    assert (dead_letters, parked) == (4, 2)
    for reason in ("invalid_json", "invalid_utf8", "wrong_type", "rejected_by_highlevel"):
        assert reason in channels["dead-letter topic"], reason
    assert "l***@example.com" in shown["/debug/deliveries.json?limit=1000"]
    assert '"firstName":"hidden:' in shown["/debug/deliveries.json?limit=1000 (session)"]
    assert "+1******0101" in shown["/debug/events"]
    assert "rejected_by_highlevel" in shown["dlq list --json"]
    assert "contact" in shown[f"forget --email {EMAILS[0]} --delete-contact"]
    # The debugger is local-only by default (DEBUG_HOST unset), on its own port.
    assert f"event debugger on {debug}/debug" in logs["run (stderr)"]
    assert "SCRAM-SHA-512" in logs["run (stderr)"]  # librdkafka's security debugging was on
    assert "401" in logs["run (stderr)"]


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"statusCode": 401, "message": f"Invalid token {OK_TOKEN}"}),
        orjson.dumps({"statusCode": 422, "message": [f"token {OK_TOKEN} is not allowed"]}),
        f"<html>bad gateway for Bearer {OK_TOKEN}</html>".encode(),
    ],
    ids=["message", "message list", "not JSON"],
)
async def test_a_token_echoed_by_highlevel_is_starred_out_of_the_answer(body: bytes) -> None:
    """HighLevel's message goes to the logs, the debugger and dead-letter headers: a gateway
    echoing the bad token must not carry it there (the sandbox never echoes, so a stand-in
    server answers here)."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=401, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/contacts/upsert", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = HighLevelClient(base_url=f"http://127.0.0.1:{port}")
    try:
        answer = await client.upsert(token=OK_TOKEN, payload={"locationId": OK_LOCATION})
    finally:
        await client.close()
        await runner.cleanup()
    assert answer.status == 401
    assert "***" in answer.message
    assert not any(form in repr(answer) for form in leak_forms(OK_TOKEN))
