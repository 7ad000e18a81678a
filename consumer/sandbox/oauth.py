"""Pure state of the sandbox's OAuth side: one Marketplace app installed in one company (agency)
and its locations; authorization codes, access and refresh tokens, their lifetimes and rotation.

Nothing here does I/O or reads a clock: every operation takes ``now`` (epoch seconds) from the
server (``consumer.sandbox.server``), which maps HTTP onto these methods. Token values are
random (``secrets``) and never appear in an error, a counter or ``to_json``.

Behaviour emulated (docs/highlevel.md, "OAuth"):

- ``POST /oauth/token`` (:meth:`OAuthState.token`): ``grant_type`` ``authorization_code``
  (a code of ``issue_code`` or ``reconnect``, single-use, valid ``code_ttl_s``) or
  ``refresh_token``; ``user_type`` ``Company`` or ``Location`` must match what the code or
  refresh token was issued for. Each answer carries a new access token (``access_ttl_s``) and a
  new refresh token (``refresh_ttl_s``). **Refresh tokens are single-use**: presenting a used
  one answers 400 ``Invalid grant: refresh token is invalid`` and counts ``refreshReuses``.
  Access tokens already issued stay valid until they expire.
- ``POST /oauth/locationToken`` (:meth:`OAuthState.location_token`): a valid Company access
  token mints a token of an installed location (a Location grant of its own).
- ``GET /oauth/installedLocations`` (:meth:`OAuthState.installed_locations`).
- ``POST /oauth/reconnect`` (:meth:`OAuthState.reconnect`): the app's key and secret and a
  company or location id give a new authorization code.
- :meth:`OAuthState.invalidate`: the grant's current refresh token stops working (what happens
  when HighLevel loses it, or another party used it): the consumer then needs ``reconnect``.
- :meth:`OAuthState.uninstall`: the app is uninstalled from the company: the company's refresh
  token stops working and ``reconnect`` answers 400 until the app is installed again (the next
  ``issue_code``, what an install redirects with). Access tokens already issued run out on
  their own.

Sandbox choices where HighLevel documents nothing: error bodies follow RFC 6749
(``{"error": "invalid_grant", "error_description": "..."}``; HighLevel's message for a reused
refresh token is the one callers report); an expired access token is refused like an unknown
one (401 ``Invalid JWT``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from consumer.sandbox.state import iso_time

COMPANY: Final = "Company"
LOCATION: Final = "Location"
APP_SCOPES: Final = (
    "contacts.readonly",
    "contacts.write",
    "locations.readonly",
    "oauth.readonly",
    "oauth.write",
)
"""What the app was granted: the scopes README's install flow asks for."""
INVALID_REFRESH: Final = "Invalid grant: refresh token is invalid"


class OAuthRefused(Exception):
    """A request the OAuth endpoints refuse: answer ``status`` with ``body``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"error": error, "error_description": description}


def _invalid_grant(description: str) -> OAuthRefused:
    return OAuthRefused(400, "invalid_grant", description)


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """Who an access token speaks for: the company, or one of its locations (``location_id``)."""

    company_id: str
    location_id: str | None
    expires_at: float
    scopes: frozenset[str]

    @property
    def user_type(self) -> str:
        return COMPANY if self.location_id is None else LOCATION


@dataclass(slots=True)
class _Grant:
    """One installation grant (the company's, or a location's): its current refresh token."""

    company_id: str
    location_id: str | None
    refresh_token: str | None = None
    refresh_expires_at: float = 0.0
    generation: int = 0
    refreshed_at: float | None = None


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """The app's credentials and the token lifetimes (seconds; HighLevel: a day, a year)."""

    client_id: str = "sandbox-app-client"
    client_secret: str = "sandbox-app-secret"  # noqa: S105 - the sandbox's published test app
    app_id: str = "sandbox-app"
    company_id: str = "sandbox-company"
    access_ttl_s: float = 86_399.0
    refresh_ttl_s: float = 365 * 86_400.0
    code_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if min(self.access_ttl_s, self.refresh_ttl_s, self.code_ttl_s) <= 0:
            raise ValueError("token lifetimes must be positive")
        if not (self.client_id and self.client_secret and self.app_id and self.company_id):
            raise ValueError("client id, client secret, app id and company id are required")

    def with_lifetimes(self, changes: Mapping[str, Any]) -> OAuthSettings:
        """A copy with ``accessTtlS`` / ``refreshTtlS`` changed (ValueError when invalid)."""
        unknown = sorted(set(changes) - {"accessTtlS", "refreshTtlS"})
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        values = {}
        for key, name in (("accessTtlS", "access_ttl_s"), ("refreshTtlS", "refresh_ttl_s")):
            value = changes.get(key, getattr(self, name))
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{key} must be a number")
            values[name] = float(value)
        return OAuthSettings(
            client_id=self.client_id,
            client_secret=self.client_secret,
            app_id=self.app_id,
            company_id=self.company_id,
            code_ttl_s=self.code_ttl_s,
            **values,
        )


@dataclass(slots=True)
class OAuthState:
    """The app's installation in ``settings.company_id`` over ``location_ids``; tokens issued.

    ``new_token`` makes token and code values (tests may pass a counter)."""

    settings: OAuthSettings
    location_ids: list[str]
    new_token: Callable[[], str] = field(default=lambda: secrets.token_urlsafe(24))
    counters: dict[str, int] = field(default_factory=dict)
    _grants: dict[str | None, _Grant] = field(default_factory=dict)
    _codes: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    _access: dict[str, AccessGrant] = field(default_factory=dict)
    _refresh: dict[str, str | None] = field(default_factory=dict)
    """Every refresh token ever issued -> its grant's key."""
    _used: set[str] = field(default_factory=set)
    """Refresh tokens spent by a refresh (presenting one again is a reuse)."""
    reused: list[str] = field(default_factory=list)
    """Each spent refresh token presented again (``refreshReuses``), in order: for tests that
    must tell one reuse from another; never shown by ``to_json``."""
    installed: bool = True
    """False after ``uninstall`` until the next ``issue_code``."""

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- the API ---------------------------------------------------------------------------

    def token(self, form: Mapping[str, str], now: float) -> dict[str, Any]:
        """``POST /oauth/token`` with ``form``: the answer, or OAuthRefused."""
        self._check_client(form.get("client_id"), form.get("client_secret"))
        grant_type, user_type = form.get("grant_type"), form.get("user_type")
        if user_type not in (COMPANY, LOCATION):
            raise OAuthRefused(400, "invalid_request", "user_type must be Company or Location")
        company = user_type == COMPANY
        if grant_type == "authorization_code":
            key = self._take_code(form.get("code", ""), company, now)
            self.count("exchanges")
        elif grant_type == "refresh_token":
            key = self._take_refresh(form.get("refresh_token", ""), company, now)
            self.count("refreshes")
        else:
            raise OAuthRefused(
                400, "unsupported_grant_type", "grant_type must be authorization_code or "
                "refresh_token",
            )
        return self._issue(self._grant(key), now)

    def location_token(
        self, access_token: str, company_id: str, location_id: str, now: float
    ) -> dict[str, Any]:
        """``POST /oauth/locationToken``: a Location token minted with a Company token."""
        grant = self.access(access_token, now)
        if grant is None or grant.location_id is not None:
            raise OAuthRefused(401, "invalid_token", "a valid Company access token is required")
        if company_id != grant.company_id or location_id not in self.location_ids:
            raise OAuthRefused(400, "invalid_request", "the app is not installed there")
        self.count("locationTokens")
        return self._issue(self._grant(location_id), now)

    def installed_locations(
        self, access_token: str, company_id: str, app_id: str, now: float
    ) -> dict[str, Any]:
        """``GET /oauth/installedLocations``: the locations the app is installed in."""
        grant = self.access(access_token, now)
        if grant is None or grant.location_id is not None:
            raise OAuthRefused(401, "invalid_token", "a valid Company access token is required")
        if company_id != grant.company_id or app_id != self.settings.app_id:
            raise OAuthRefused(400, "invalid_request", "unknown company or app")
        self.count("installedLocations")
        locations = [
            {"_id": loc, "name": f"Location {loc}", "isInstalled": True}
            for loc in self.location_ids
        ]
        return {"locations": locations, "count": len(locations), "installToFutureLocations": True}

    def reconnect(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        """``POST /oauth/reconnect``: a new authorization code for the company or a location."""
        self._check_client(body.get("clientKey"), body.get("clientSecret"))
        company_id, location_id = body.get("companyId"), body.get("locationId")
        if not self.installed:
            self.count("refusedReconnects")
            raise OAuthRefused(400, "invalid_request", "the app is not installed in this company")
        if location_id is not None:
            if location_id not in self.location_ids:
                raise OAuthRefused(400, "invalid_request", "the app is not installed there")
            key: str | None = str(location_id)
        elif company_id == self.settings.company_id:
            key = None
        else:
            raise OAuthRefused(400, "invalid_request", "companyId or locationId is required")
        self.count("reconnects")
        code = self.issue_code(key, now)
        expires = iso_time(now + self.settings.code_ttl_s)
        return {"authorizationCode": code, "expiresAt": expires}

    # -- for the server and the admin endpoints --------------------------------------------

    def access(self, access_token: str, now: float) -> AccessGrant | None:
        """What a valid, unexpired access token speaks for; None otherwise."""
        grant = self._access.get(access_token)
        if grant is None:
            return None
        if now >= grant.expires_at:
            self.count("expiredAccessTokens")
            return None
        return grant

    def issued_to(self, access_token: str) -> str | None:
        """The location an OAuth Location access token was issued for, expired or not; None
        for any other token."""
        grant = self._access.get(access_token)
        return None if grant is None else grant.location_id

    def issue_code(self, location_id: str | None, now: float) -> str:
        """An authorization code for the company (None) or a location: what HighLevel's install
        redirect carries."""
        if location_id is not None and location_id not in self.location_ids:
            raise KeyError(location_id)
        self.installed = True
        code = self.new_token()
        self._codes[code] = (location_id, now + self.settings.code_ttl_s)
        return code

    def invalidate(self, location_id: str | None) -> bool:
        """Make the grant's current refresh token unusable; False when it has none."""
        grant = self._grants.get(location_id)
        if grant is None or grant.refresh_token is None:
            return False
        grant.refresh_token = None
        self.count("invalidated")
        return True

    def uninstall(self) -> None:
        """The app is uninstalled from the company: its refresh token stops working and
        ``reconnect`` is refused until the next ``issue_code`` (an install)."""
        self.installed = False
        self.invalidate(None)
        self.count("uninstalls")

    def to_json(self, now: float) -> dict[str, Any]:
        """Settings, counters and each grant's state: never a token value."""
        s = self.settings
        return {
            "clientId": s.client_id,
            "appId": s.app_id,
            "companyId": s.company_id,
            "locations": list(self.location_ids),
            "installed": self.installed,
            "accessTtlS": s.access_ttl_s,
            "refreshTtlS": s.refresh_ttl_s,
            "counters": dict(self.counters),
            "grants": {
                key or s.company_id: {
                    "userType": COMPANY if key is None else LOCATION,
                    "generation": g.generation,
                    "hasRefreshToken": g.refresh_token is not None,
                    "refreshExpiresIn": max(0.0, g.refresh_expires_at - now),
                    "refreshedAt": iso_time(g.refreshed_at) if g.refreshed_at else None,
                }
                for key, g in self._grants.items()
            },
        }

    # -- internals -------------------------------------------------------------------------

    def _check_client(self, client_id: Any, client_secret: Any) -> None:
        s = self.settings
        if client_id != s.client_id or not secrets.compare_digest(
            str(client_secret or ""), s.client_secret
        ):
            raise OAuthRefused(401, "invalid_client", "Invalid client credentials")

    def _take_code(self, code: str, company: bool, now: float) -> str | None:
        """The grant key of a valid code of the right user type, which it spends."""
        entry = self._codes.get(code)
        if entry is None or now >= entry[1]:
            raise _invalid_grant("Invalid grant: authorization code is invalid")
        _check_user_type(entry[0], company)
        del self._codes[code]
        return entry[0]

    def _take_refresh(self, refresh_token: str, company: bool, now: float) -> str | None:
        """The grant key of the current refresh token of a grant of the right user type, which
        it spends; a spent one is a reuse."""
        if refresh_token not in self._refresh:
            raise _invalid_grant(INVALID_REFRESH)
        key = self._refresh[refresh_token]
        _check_user_type(key, company)
        grant = self._grants[key]
        if refresh_token in self._used:
            self.count("refreshReuses")
            self.reused.append(refresh_token)
            raise _invalid_grant(INVALID_REFRESH)
        if grant.refresh_token != refresh_token or now >= grant.refresh_expires_at:
            # superseded by a newer code exchange, invalidated, or expired
            self.count("invalidGrants")
            raise _invalid_grant(INVALID_REFRESH)
        self._used.add(refresh_token)
        grant.refreshed_at = now
        return key

    def _grant(self, key: str | None) -> _Grant:
        grant = self._grants.get(key)
        if grant is None:
            grant = self._grants[key] = _Grant(self.settings.company_id, key)
        return grant

    def _issue(self, grant: _Grant, now: float) -> dict[str, Any]:
        s = self.settings
        access, refresh = self.new_token(), self.new_token()
        self._access[access] = AccessGrant(
            grant.company_id, grant.location_id, now + s.access_ttl_s, frozenset(APP_SCOPES)
        )
        self._refresh[refresh] = grant.location_id
        grant.refresh_token = refresh
        grant.refresh_expires_at = now + s.refresh_ttl_s
        grant.generation += 1
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            # whole seconds, as HighLevel's; a fractional test lifetime as it is
            "expires_in": round(s.access_ttl_s) if s.access_ttl_s % 1 == 0 else s.access_ttl_s,
            "refresh_token": refresh,
            "scope": " ".join(APP_SCOPES),
            "userType": COMPANY if grant.location_id is None else LOCATION,
            "companyId": grant.company_id,
            "userId": "sandbox-user",
        }
        if grant.location_id is not None:
            answer["locationId"] = grant.location_id
        return answer


def _check_user_type(key: str | None, company: bool) -> None:
    if (key is None) != company:
        raise _invalid_grant("user_type does not match the grant")


def installation_locations(existing: Iterable[str], generated: int) -> list[str]:
    """The locations an installation covers: every served location, then ``generated`` more
    named ``oauth-location-01``... (``ghl-consumer sandbox --oauth-locations N``)."""
    width = max(2, len(str(generated)))
    return [*existing, *(f"oauth-location-{i:0{width}d}" for i in range(1, generated + 1))]
