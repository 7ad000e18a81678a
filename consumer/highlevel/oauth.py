"""HighLevel's OAuth endpoints over aiohttp, for a Marketplace app (docs/highlevel.md, "OAuth").

``OAuthClient`` sends:

- ``POST /oauth/token`` (form-encoded, ``client_id`` / ``client_secret``): ``exchange_code``
  (``grant_type=authorization_code``) and ``refresh`` (``grant_type=refresh_token``). Refresh
  tokens are single-use: a successful ``refresh`` has spent the token it was given, so the
  caller must store the answer's new one before anything else (``consumer.state.oauth_tokens``
  does, for every replica).
- ``POST /oauth/locationToken`` (Bearer Company token, ``Version``): ``location_token``.
- ``GET /oauth/installedLocations`` (Bearer Company token, ``Version``): ``installed_locations``.
- ``POST /oauth/reconnect`` (JSON ``clientKey`` / ``clientSecret``): ``reconnect``, a new
  authorization code for an installation whose tokens were lost.

Every call returns a value or raises ``OAuthError`` (``InvalidGrant`` for 400
``invalid_grant``); an error's message never holds a token or the client secret (they are
starred out of what the server echoes). ``TokenGrant`` prints without its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson

from consumer.errors import InvalidGrant, OAuthError
from consumer.highlevel.client import API_VERSION, Timeouts

COMPANY: Final = "Company"
LOCATION: Final = "Location"
_MAX_MESSAGE_CHARS = 300
TIMEOUTS: Final = Timeouts(connect=5.0, total=10.0)
"""The default limits: a refresh holds the installation's lease, which must outlast it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenGrant:
    """An answer of ``/oauth/token`` or ``/oauth/locationToken``. The tokens are left out of
    ``repr``; ``expires_in_s`` counts from when the answer arrived."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    """Empty when the answer carried none."""
    expires_in_s: float
    scope: str
    user_type: str
    company_id: str
    location_id: str | None
    user_id: str | None


class OAuthClient:
    """The app's OAuth calls. Create inside a running loop; ``await close()`` when done.
    ``client_secret`` is the value itself (read from the settings' ``Secret`` by the caller)."""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        timeouts: Timeouts = TIMEOUTS,
        user_agent: str = "ghl-consumer",
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect),
            headers={"Accept": "application/json", "User-Agent": user_agent},
        )

    async def close(self) -> None:
        await self._session.close()

    async def exchange_code(self, code: str, *, user_type: str = COMPANY) -> TokenGrant:
        """``authorization_code`` grant: the tokens of an install (or of ``reconnect``'s code)."""
        form = {"grant_type": "authorization_code", "code": code, "user_type": user_type}
        return _grant(await self._token(form, code))

    async def refresh(self, refresh_token: str, *, user_type: str = COMPANY) -> TokenGrant:
        """``refresh_token`` grant. On success ``refresh_token`` is spent: store the answer.
        ``InvalidGrant`` when it was spent already (or superseded, or invalidated)."""
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "user_type": user_type,
        }
        return _grant(await self._token(form, refresh_token))

    async def location_token(
        self, company_token: str, *, company_id: str, location_id: str
    ) -> TokenGrant:
        """A Location token for ``location_id`` minted with the Company token."""
        body = await self._call(
            "POST",
            "/oauth/locationToken",
            hidden=(company_token,),
            headers=_bearer(company_token),
            data={"companyId": company_id, "locationId": location_id},
        )
        return _grant(body)

    async def installed_locations(
        self, company_token: str, *, company_id: str, app_id: str
    ) -> list[str]:
        """The ids of the locations the app is installed in."""
        body = await self._call(
            "GET",
            "/oauth/installedLocations",
            hidden=(company_token,),
            headers=_bearer(company_token),
            params={"companyId": company_id, "appId": app_id, "isInstalled": "true"},
        )
        locations = body.get("locations")
        if not isinstance(locations, list):
            raise OAuthError("installedLocations: no location list", status=200, retriable=True)
        return [
            str(item["_id"])
            for item in locations
            if isinstance(item, dict) and item.get("_id") and item.get("isInstalled", True)
        ]

    async def reconnect(
        self, *, company_id: str | None = None, location_id: str | None = None
    ) -> str:
        """A new authorization code for the installation in ``company_id`` (or in one
        location), to pass to ``exchange_code``."""
        if (company_id is None) == (location_id is None):
            raise ValueError("reconnect needs exactly one of company_id and location_id")
        body: dict[str, str] = {
            "clientKey": self._client_id,
            "clientSecret": self._client_secret,
        }
        if company_id is not None:
            body["companyId"] = company_id
        else:
            body["locationId"] = location_id or ""
        answer = await self._call(
            "POST",
            "/oauth/reconnect",
            hidden=(),
            headers={"Content-Type": "application/json"},
            data=orjson.dumps(body),
        )
        code = answer.get("authorizationCode")
        if not isinstance(code, str) or not code:
            raise OAuthError("reconnect: no authorizationCode", status=200, retriable=False)
        return code

    async def _token(self, form: dict[str, str], spent: str) -> dict[str, Any]:
        form = {"client_id": self._client_id, "client_secret": self._client_secret, **form}
        return await self._call("POST", "/oauth/token", hidden=(spent,), headers={}, data=form)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        hidden: tuple[str, ...],
        headers: Mapping[str, str],
        data: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The JSON object of a 2xx answer; ``OAuthError`` otherwise (``hidden`` values and
        the client secret starred out of its message)."""
        try:
            async with self._session.request(
                method, self._base_url + path, headers=headers, data=data, params=params
            ) as response:
                status, raw = response.status, await response.read()
        except TimeoutError:
            raise OAuthError(f"{path}: timeout", status=None, retriable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            # the exception's text may carry the URL, never the form: keep only its class
            raise OAuthError(
                f"{path}: connection: {type(exc).__name__}", status=None, retriable=True
            ) from None
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = {}
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        if 200 <= status < 300:
            return body
        message = _message(body, raw, (*hidden, self._client_secret))
        if status == 400 and (
            body.get("error") == "invalid_grant" or "invalid grant" in message.lower()
        ):
            raise InvalidGrant(f"{path}: {message}")
        retriable = status == 429 or status >= 500
        raise OAuthError(f"{path}: HTTP {status}: {message}", status=status, retriable=retriable)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Version": API_VERSION}


def _grant(body: Mapping[str, Any]) -> TokenGrant:
    access, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(access, str) or not access or not isinstance(expires_in, int | float):
        raise OAuthError(
            "token answer without access_token or expires_in", status=200, retriable=False
        )
    refresh, location = body.get("refresh_token"), body.get("locationId")
    user_id = body.get("userId")
    return TokenGrant(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) else "",
        expires_in_s=float(expires_in),
        scope=str(body.get("scope") or ""),
        user_type=str(body.get("userType") or ""),
        company_id=str(body.get("companyId") or ""),
        location_id=location if isinstance(location, str) and location else None,
        user_id=user_id if isinstance(user_id, str) else None,
    )


def _message(body: Mapping[str, Any], raw: bytes, hidden: tuple[str, ...]) -> str:
    """The server's error text (RFC 6749 ``error_description``, or HighLevel's ``message``),
    bounded, with every ``hidden`` value starred out."""
    text = body.get("error_description") or body.get("message") or body.get("error")
    if isinstance(text, list):
        text = "; ".join(str(part) for part in text)
    if not isinstance(text, str):
        # starred before it is cut, so that no part of a hidden value survives the cut
        text = raw[: 64 * 1024].decode("utf-8", "replace")
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    return text[:_MAX_MESSAGE_CHARS]
