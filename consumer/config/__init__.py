"""Settings: the one reader of configuration files and the environment, and the frozen tree
it returns. Import from here: the names below are the package's API. Inside: ``settings`` (the
values), ``loader`` (``load_settings``: the file, the plain sections, ``[kafka]``, environment
overrides), ``integrations`` (``[[integrations]]`` and ``GHL_*``), ``oauth`` (``[[oauth]]``),
``tables`` (typed reading with field-naming errors). May import ``consumer.core`` and
``consumer.errors`` only.

``load_settings(path, environ)`` reads an optional TOML file, applies the environment
overrides below (``docs/architecture.md``, "Configuration"), validates everything and returns
a frozen ``Settings`` tree, or raises ``ConfigError`` whose message names the field
(``integrations[1].location_id: required``, ``KAFKA_TOPICS: ...``). Tokens are ``Secret``
values: masked in repr/str, the raw value only through ``Secret.reveal()``; error messages name
where a secret comes from, never its value. ``read_secret_file`` reads a ``{ file = ... }``
secret anew (a rotated token).

Environment, overriding the file:
``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_TOPICS`` (comma list), ``KAFKA_GROUP_ID``,
``KAFKA_AUTO_OFFSET_RESET``, ``GHL_API_BASE_URL`` (``http://`` only to a loopback host unless
``GHL_ALLOW_INSECURE_HTTP=true``), ``METRICS_PORT``, ``METRICS_HOST``, ``DEBUG_HOST``,
``DEBUG_PORT``, ``DEBUG_ALLOWED_HOSTS`` (comma list), ``DEBUG_ACCESS_TOKEN`` (environment
only), ``REDIS_URL``; and for the
integration with id ``default``: ``GHL_LOCATION_ID``, ``GHL_ACCESS_TOKEN``,
``GHL_CONSENT_CATEGORY``, ``GHL_DEFAULT_PHONE_REGION``. With no ``[[integrations]]`` in the file
(or no file) and ``GHL_LOCATION_ID`` + ``GHL_ACCESS_TOKEN`` set, one integration ``default``
receives every event. When the file defines integrations but none has id ``default``, setting a
``GHL_*`` integration variable is an error rather than silently ignored.
"""

from consumer.config.loader import load_settings
from consumer.config.settings import (
    PROFILES_CO_PARTITIONED,
    REPLAY_CO_PARTITIONED,
    STITCH_CO_PARTITIONED,
    DebugSettings,
    DeliverySettings,
    EngineSettings,
    HighLevelSettings,
    Integration,
    KafkaSettings,
    MappingSettings,
    MetricsSettings,
    OAuthApp,
    ProfileKey,
    ProfilesSettings,
    RedisSettings,
    Secret,
    Settings,
)
from consumer.config.tables import read_secret_file

__all__ = [
    "PROFILES_CO_PARTITIONED",
    "REPLAY_CO_PARTITIONED",
    "STITCH_CO_PARTITIONED",
    "DebugSettings",
    "DeliverySettings",
    "EngineSettings",
    "HighLevelSettings",
    "Integration",
    "KafkaSettings",
    "MappingSettings",
    "MetricsSettings",
    "OAuthApp",
    "ProfileKey",
    "ProfilesSettings",
    "RedisSettings",
    "Secret",
    "Settings",
    "load_settings",
    "read_secret_file",
]
