"""The ``[[integrations]]`` of the configuration, and the ``GHL_*`` environment variables that
configure the integration with id ``default`` (``read_integrations``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from consumer.config.settings import Integration, Secret
from consumer.config.tables import (
    dotted_path,
    read_secret,
    reject_unknown_keys,
    string_list,
    subtable,
)
from consumer.core.events import REMOVABLE_FIELDS, ConsentMode, PresetEvent, TagMode
from consumer.core.normalise import PHONE_REGIONS
from consumer.core.targets import CustomFieldMapping, Routing, Target
from consumer.errors import ConfigError

DEFAULT_INTEGRATION: Final = "default"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_INTEGRATION_KEYS: Final = (
    "id",
    "location_id",
    "location_path",
    "oauth",
    "access_token",
    "consent_category",
    "consent_mode",
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


def read_integrations(
    value: object, environ: Mapping[str, str], read_secrets: bool
) -> tuple[Integration, ...]:
    """The ``[[integrations]]`` tables (``value``; None: none), with the ``GHL_*`` variables
    applied to the one with id ``default`` (or standing for it when the file has none).
    ``read_secrets=False`` leaves tokens unread. Raises ConfigError naming the field."""
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
    reject_unknown_keys(table, _INTEGRATION_KEYS, where)
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
    oauth = table.get("oauth")
    if oauth is not None and (not isinstance(oauth, str) or not oauth.strip()):
        raise ConfigError(f"{where}.oauth: expected the id of an [[oauth]] table")
    location_path = None
    if "location_path" in table:
        if oauth is None:
            raise ConfigError(f"{where}.location_path: only with oauth = \"<[[oauth]] id>\"")
        if location is not None:
            raise ConfigError(f"{where}: location_id and location_path exclude each other")
        location_path = dotted_path(table["location_path"], f"{where}.location_path")
        location = ""
    elif location is None or location == "":
        raise ConfigError(f"{location_where}: required")
    if not isinstance(location, str):
        raise ConfigError(f"{location_where}: expected a string")

    token: Secret | None = None
    if oauth is not None:
        if "access_token" in table or "GHL_ACCESS_TOKEN" in env:
            raise ConfigError(f"{where}: access_token and oauth exclude each other")
    elif "GHL_ACCESS_TOKEN" in env:
        source = "environment variable GHL_ACCESS_TOKEN"
        token_value = env["GHL_ACCESS_TOKEN"].strip()
        if read_secrets and not token_value:
            raise ConfigError("GHL_ACCESS_TOKEN: must not be empty")
        token = Secret(token_value, source) if read_secrets else Secret.unread(source)
    elif "access_token" in table:
        token = read_secret(table["access_token"], f"{where}.access_token", environ, read_secrets)
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
    consent_mode = table.get("consent_mode", ConsentMode.BOTH.value)
    if consent_mode not in {m.value for m in ConsentMode}:
        raise ConfigError(f"{where}.consent_mode: expected one of both, deny_only")

    fields_where = f"{where}.fields"
    fields = subtable(table, "fields", fields_where)
    removed, custom = _fields(fields, fields_where)
    static_source = _optional_text(fields, "static_source", fields_where)
    default_source = _optional_text(fields, "default_source", fields_where)
    if static_source is not None and default_source is not None:
        raise ConfigError(f"{fields_where}: static_source and default_source exclude each other")
    tags = string_list(fields.get("tags", []), f"{fields_where}.tags")
    target = Target(
        id=ident,
        location_id=location.strip(),
        consent_category=category.strip(),
        consent_mode=ConsentMode(consent_mode),
        default_phone_region=region,
        tag_mode=TagMode(tag_mode),
        removed_fields=removed,
        custom_fields=custom,
        static_tags=tuple(dict.fromkeys(tags)),
        static_source=static_source,
        default_source=default_source,
        aliases=_aliases(subtable(table, "events", f"{where}.events"), f"{where}.events"),
        routing=_routing(subtable(table, "routing", f"{where}.routing"), f"{where}.routing"),
        location_path=location_path,
    )
    return Integration(
        target=target, access_token=token, oauth=None if oauth is None else oauth.strip()
    )


def _optional_text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: expected a non-empty string")
    return value.strip()


def _fields(
    table: dict[str, Any], where: str
) -> tuple[frozenset[str], tuple[CustomFieldMapping, ...]]:
    reject_unknown_keys(
        table, ("remove", "custom", "tags", "static_source", "default_source"), where
    )
    removed = frozenset(string_list(table.get("remove", []), f"{where}.remove"))
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
        reject_unknown_keys(entry, ("id", "source"), entry_where)
        field_id = entry.get("id")
        if not isinstance(field_id, str) or not field_id.strip():
            raise ConfigError(f"{entry_where}.id: required (the HighLevel custom field id)")
        if field_id in seen:
            raise ConfigError(f"{entry_where}.id: {field_id!r} is mapped twice")
        seen.add(field_id)
        if "source" not in entry:
            raise ConfigError(f"{entry_where}.source: required (e.g. properties.plan)")
        source = dotted_path(entry["source"], f"{entry_where}.source")
        custom.append(CustomFieldMapping(field_id.strip(), source))
    return removed, tuple(custom)


def _aliases(table: dict[str, Any], where: str) -> Mapping[str, PresetEvent]:
    reject_unknown_keys(table, ("aliases",), where)
    aliases = subtable(table, "aliases", f"{where}.aliases")
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
    reject_unknown_keys(table, ("topics", "field", "values"), where)
    topics = frozenset(string_list(table.get("topics", []), f"{where}.topics"))
    if ("field" in table) != ("values" in table):
        raise ConfigError(f"{where}: field and values go together")
    if "field" not in table:
        return Routing(topics=topics)
    values = frozenset(string_list(table["values"], f"{where}.values"))
    if not values:
        raise ConfigError(f"{where}.values: at least one value is required")
    field = dotted_path(table["field"], f"{where}.field")
    return Routing(topics=topics, field=field, values=values)
