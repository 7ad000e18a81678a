"""``[[oauth]]`` tables: validated at start-up with messages naming the field; the client
secret a ``Secret`` read from env or file, never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.config import Settings, load_settings
from consumer.errors import ConfigError

ENV = {
    "GHL_LOCATION_ID": "LOC",
    "GHL_ACCESS_TOKEN": "pit-value",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "APP_SECRET": "client-secret-value",
}
APP = """
[[oauth]]
client_id = "app1-abc"
client_secret = { env = "APP_SECRET" }
app_id = "app1"
company_id = "agency-1"
"""


def load(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, **options: bool
) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(str(path), ENV if environ is None else environ, **options)


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **options: bool) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, environ, **options)
    assert "client-secret-value" not in str(raised.value)
    return str(raised.value)


def test_listed_locations_and_a_secret_never_printed(tmp_path: Path) -> None:
    settings = load(tmp_path, APP + 'locations = ["loc-a", "loc-b"]\n')
    (app,) = settings.oauth
    assert (app.id, app.client_id, app.app_id, app.company_id) == (
        "oauth", "app1-abc", "app1", "agency-1",
    )
    assert app.locations == ("loc-a", "loc-b")
    assert not app.discover
    assert app.client_secret.reveal() == "client-secret-value"
    assert "client-secret-value" not in repr(settings)


def test_discovered_locations_and_a_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    text = APP.replace('{ env = "APP_SECRET" }', f'{{ file = "{secret}" }}') + "discover = true\n"
    (app,) = load(tmp_path, text).oauth
    assert app.discover
    assert app.locations == ()
    assert app.client_secret.reveal() == "from-file"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (APP.replace('company_id = "agency-1"\n', "") + "discover = true\n",
         "oauth[0].company_id: required"),
        (APP.replace('client_secret = { env = "APP_SECRET" }\n', "") + "discover = true\n",
         "oauth[0].client_secret: required"),
        (APP.replace('{ env = "APP_SECRET" }', '"client-secret-value"') + "discover = true\n",
         "oauth[0].client_secret: give"),
        (APP, "oauth[0].locations: required"),
        (APP + "locations = []\n", "oauth[0].locations: must not be empty"),
        (APP + 'locations = ["a"]\ndiscover = true\n', "not both"),
        (APP + 'discover = "yes"\n', "oauth[0].discover: expected true or false"),
        (APP + "discover = true\nscopes = []\n", "oauth[0].scopes: unknown setting"),
        (APP + "discover = true\n" + APP + "discover = true\n", "oauth[0].id: required"),
        (APP + 'id = "a"\ndiscover = true\n' + APP + 'id = "b"\ndiscover = true\n',
         "oauth[1].company_id: 'agency-1' is configured twice"),
    ],
)
def test_invalid_tables_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    assert message in error(tmp_path, text)


def test_the_secret_must_be_set_unless_left_unread(tmp_path: Path) -> None:
    environ = {k: v for k, v in ENV.items() if k != "APP_SECRET"}
    text = APP + "discover = true\n"
    assert "environment variable APP_SECRET is not set" in error(tmp_path, text, environ)
    (app,) = load(tmp_path, text, environ, oauth_secrets=False).oauth
    with pytest.raises(ConfigError):
        app.client_secret.reveal()


def test_redis_is_required_with_oauth_by_the_commands_that_use_tokens(tmp_path: Path) -> None:
    environ = {k: v for k, v in ENV.items() if k != "REDIS_URL"}
    text = APP + "discover = true\n"
    assert "redis.url: required with [[oauth]]" in error(tmp_path, text, environ)
    assert "redis.url: required" in error(
        tmp_path, text, environ, read_secrets=False, token_store=True
    )
    # audit, dlq, the dry run: nothing read from the token store
    (app,) = load(tmp_path, text, environ, read_secrets=False, kafka_secrets=True).oauth
    assert app.company_id == "agency-1"


def test_the_oauth_commands_need_no_integration(tmp_path: Path) -> None:
    environ = {"REDIS_URL": ENV["REDIS_URL"], "APP_SECRET": "x"}
    text = APP + "discover = true\n"
    assert "integrations: none configured" in error(tmp_path, text, environ)
    settings = load(tmp_path, text, environ, integrations_required=False)
    assert settings.integrations == ()
    assert len(settings.oauth) == 1


NO_GHL = {k: v for k, v in ENV.items() if not k.startswith("GHL_")}
OAUTH_INTEGRATION = """
[[integrations]]
id = "agency-events"
oauth = "oauth"
location_path = "context.groupId"
"""


def test_an_integration_reaching_the_installation_by_a_location_path(tmp_path: Path) -> None:
    text = APP + "discover = true\ndiscover_seconds = 60\n" + OAUTH_INTEGRATION
    settings = load(tmp_path, text, NO_GHL)
    (integration,) = settings.integrations
    assert (integration.oauth, integration.access_token) == ("oauth", None)
    assert integration.target.location_path == ("context", "groupId")
    assert integration.location_id == ""
    assert settings.oauth[0].discover_seconds == 60


@pytest.mark.parametrize(
    ("integration", "message"),
    [
        ('oauth = "nope"\nlocation_path = "a.b"', "integrations[0].oauth: no [[oauth]] table"),
        ('oauth = "oauth"\nlocation_id = "loc-z"', "'loc-z' is not one of [[oauth]] oauth's"),
        (
            'oauth = "oauth"\nlocation_path = "a"\nlocation_id = "loc-a"',
            "location_id and location_path exclude each other",
        ),
        (
            'oauth = "oauth"\nlocation_id = "loc-a"\naccess_token = { env = "APP_SECRET" }',
            "access_token and oauth exclude each other",
        ),
        (
            'location_path = "a"\naccess_token = { env = "APP_SECRET" }',
            "integrations[0].location_path: only with oauth",
        ),
        ('oauth = "oauth"\nlocation_path = "a..b"', "not a dotted path"),
    ],
)
def test_oauth_integrations_are_validated_against_their_table(
    tmp_path: Path, integration: str, message: str
) -> None:
    text = APP + 'locations = ["loc-a"]\n[[integrations]]\nid = "x"\n' + integration + "\n"
    assert message in error(tmp_path, text, NO_GHL)


def test_discover_seconds_must_be_a_positive_number(tmp_path: Path) -> None:
    text = APP + "discover = true\ndiscover_seconds = 0\n"
    assert "oauth[0].discover_seconds: expected a number" in error(tmp_path, text)


def test_auto_reconnect_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    listed = APP + 'locations = ["loc-a"]\n'
    default = load(tmp_path, listed).oauth[0]
    assert (default.auto_reconnect, default.reconnect_interval_seconds) == (True, 600.0)
    text = listed + "auto_reconnect = false\nreconnect_interval_seconds = 30\n"
    app = load(tmp_path, text).oauth[0]
    assert (app.auto_reconnect, app.reconnect_interval_seconds) == (False, 30.0)
    assert "oauth[0].auto_reconnect: expected true or false" in error(
        tmp_path, listed + 'auto_reconnect = "no"\n'
    )
    assert "oauth[0].reconnect_interval_seconds: expected a number" in error(
        tmp_path, listed + "reconnect_interval_seconds = 0\n"
    )
