"""The sandbox's OAuth rules (consumer.sandbox.oauth), pure: codes, rotation, single-use refresh
tokens, reuse counting, location tokens, reconnect, invalidation, uninstall, lifetimes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from consumer.sandbox.oauth import (
    INVALID_REFRESH,
    OAuthRefused,
    OAuthSettings,
    OAuthState,
    installation_locations,
)

NOW = 1_790_000_000.0
APP = OAuthSettings(access_ttl_s=20, refresh_ttl_s=1000)


def state() -> OAuthState:
    counter = itertools.count(1)
    return OAuthState(APP, ["loc-a", "loc-b"], new_token=lambda: f"t{next(counter)}")


def form(**values: str) -> dict[str, str]:
    return {"client_id": APP.client_id, "client_secret": APP.client_secret, **values}


def company_tokens(oauth: OAuthState, now: float = NOW) -> dict[str, Any]:
    code = oauth.issue_code(None, now)
    return oauth.token(
        form(grant_type="authorization_code", code=code, user_type="Company"), now
    )


def refresh(oauth: OAuthState, token: str, now: float = NOW) -> dict[str, Any]:
    return oauth.token(
        form(grant_type="refresh_token", refresh_token=token, user_type="Company"), now
    )


def refused(call: Any) -> OAuthRefused:
    with pytest.raises(OAuthRefused) as info:
        call()
    return info.value


def test_code_exchange_answers_company_tokens_and_the_code_is_single_use() -> None:
    oauth = state()
    code = oauth.issue_code(None, NOW)
    answer = oauth.token(form(grant_type="authorization_code", code=code, user_type="Company"), NOW)
    assert answer["userType"] == "Company"
    assert answer["companyId"] == APP.company_id
    assert answer["expires_in"] == 20
    assert "locationId" not in answer
    assert answer["access_token"] != answer["refresh_token"]
    again = refused(
        lambda: oauth.token(
            form(grant_type="authorization_code", code=code, user_type="Company"), NOW
        )
    )
    assert (again.status, again.body["error"]) == (400, "invalid_grant")


def test_refresh_rotates_and_a_used_refresh_token_is_a_counted_reuse() -> None:
    oauth = state()
    first = company_tokens(oauth)
    second = refresh(oauth, first["refresh_token"], NOW + 1)
    assert second["refresh_token"] != first["refresh_token"]
    reuse = refused(lambda: refresh(oauth, first["refresh_token"], NOW + 2))
    assert reuse.status == 400
    assert reuse.body == {"error": "invalid_grant", "error_description": INVALID_REFRESH}
    assert oauth.counters["refreshReuses"] == 1
    assert oauth.counters["refreshes"] == 1  # successful refreshes only
    # the rotated one still works: a reuse does not revoke the family
    refresh(oauth, second["refresh_token"], NOW + 3)


def test_access_tokens_expire_and_old_ones_stay_valid_after_a_refresh() -> None:
    oauth = state()
    first = company_tokens(oauth)
    refresh(oauth, first["refresh_token"], NOW + 5)
    assert oauth.access(first["access_token"], NOW + 19.9) is not None
    assert oauth.access(first["access_token"], NOW + 20) is None
    assert oauth.counters["expiredAccessTokens"] == 1


def test_user_type_must_match_and_a_mismatch_spends_nothing() -> None:
    oauth = state()
    first = company_tokens(oauth)
    wrong = refused(
        lambda: oauth.token(
            form(
                grant_type="refresh_token", refresh_token=first["refresh_token"],
                user_type="Location",
            ),
            NOW,
        )
    )
    assert wrong.status == 400
    refresh(oauth, first["refresh_token"])  # still current
    assert "refreshReuses" not in oauth.counters


def test_bad_client_credentials_are_401() -> None:
    oauth = state()
    bad = refused(
        lambda: oauth.token(
            {"client_id": APP.client_id, "client_secret": "nope", "grant_type": "x"}, NOW
        )
    )
    assert (bad.status, bad.body["error"]) == (401, "invalid_client")
    assert "nope" not in str(bad.body)


def test_location_token_needs_a_valid_company_token_of_an_installed_location() -> None:
    oauth = state()
    company = company_tokens(oauth)
    minted = oauth.location_token(company["access_token"], APP.company_id, "loc-a", NOW)
    assert (minted["userType"], minted["locationId"]) == ("Location", "loc-a")
    grant = oauth.access(minted["access_token"], NOW)
    assert grant is not None
    assert grant.location_id == "loc-a"
    assert "contacts.write" in grant.scopes
    assert refused(
        lambda: oauth.location_token(company["access_token"], APP.company_id, "loc-x", NOW)
    ).status == 400
    assert refused(
        lambda: oauth.location_token(minted["access_token"], APP.company_id, "loc-b", NOW)
    ).status == 401  # a Location token cannot mint
    assert refused(
        lambda: oauth.location_token(company["access_token"], APP.company_id, "loc-a", NOW + 20)
    ).status == 401  # expired


def test_installed_locations_lists_the_installation() -> None:
    oauth = state()
    company = company_tokens(oauth)
    answer = oauth.installed_locations(company["access_token"], APP.company_id, APP.app_id, NOW)
    assert [loc["_id"] for loc in answer["locations"]] == ["loc-a", "loc-b"]
    assert answer["count"] == 2
    assert refused(
        lambda: oauth.installed_locations(company["access_token"], APP.company_id, "x", NOW)
    ).status == 400


def test_invalidate_then_reconnect_recovers_the_company_grant() -> None:
    oauth = state()
    first = company_tokens(oauth)
    assert oauth.invalidate(None)
    lost = refused(lambda: refresh(oauth, first["refresh_token"]))
    assert lost.body["error_description"] == INVALID_REFRESH
    assert "refreshReuses" not in oauth.counters  # invalidated, not reused
    assert oauth.counters["invalidGrants"] == 1
    creds = {"clientKey": APP.client_id, "clientSecret": APP.client_secret}
    code = oauth.reconnect({**creds, "companyId": APP.company_id}, NOW)["authorizationCode"]
    again = oauth.token(form(grant_type="authorization_code", code=code, user_type="Company"), NOW)
    refresh(oauth, again["refresh_token"])
    assert refused(lambda: oauth.reconnect({**creds, "companyId": "other"}, NOW)).status == 400
    assert refused(lambda: oauth.reconnect({"clientKey": APP.client_id}, NOW)).status == 401


def test_uninstall_refuses_reconnect_until_the_app_is_installed_again() -> None:
    oauth = state()
    first = company_tokens(oauth)
    oauth.uninstall()
    assert oauth.to_json(NOW)["installed"] is False
    assert refused(lambda: refresh(oauth, first["refresh_token"])).status == 400
    creds = {"clientKey": APP.client_id, "clientSecret": APP.client_secret}
    company = {**creds, "companyId": APP.company_id}
    answer = refused(lambda: oauth.reconnect(company, NOW))
    assert (answer.status, answer.body["error_description"]) == (
        400,
        "the app is not installed in this company",
    )
    assert oauth.counters["refusedReconnects"] == 1
    company_tokens(oauth)  # an install redirects with a code
    assert oauth.to_json(NOW)["installed"] is True
    assert oauth.reconnect(company, NOW)["authorizationCode"]


def test_reused_refresh_tokens_are_listed_in_order_but_never_shown() -> None:
    oauth = state()
    first = company_tokens(oauth)
    second = refresh(oauth, first["refresh_token"])
    refresh(oauth, second["refresh_token"])
    for token in (second["refresh_token"], first["refresh_token"]):
        refused(lambda token=token: refresh(oauth, token))
    assert oauth.reused == [second["refresh_token"], first["refresh_token"]]
    assert oauth.counters["refreshReuses"] == 2
    assert first["refresh_token"] not in str(oauth.to_json(NOW))


def test_to_json_never_holds_a_token_and_lifetimes_change() -> None:
    oauth = state()
    tokens = company_tokens(oauth)
    rendered = str(oauth.to_json(NOW))
    assert tokens["access_token"] not in rendered
    assert tokens["refresh_token"] not in rendered
    assert oauth.to_json(NOW)["grants"][APP.company_id]["generation"] == 1
    changed = APP.with_lifetimes({"accessTtlS": 5})
    assert (changed.access_ttl_s, changed.refresh_ttl_s) == (5.0, 1000.0)
    with pytest.raises(ValueError, match="accessTtlS"):
        APP.with_lifetimes({"accessTtlS": "soon"})
    with pytest.raises(ValueError, match="unknown"):
        APP.with_lifetimes({"codeTtlS": 5})
    with pytest.raises(ValueError, match="positive"):
        APP.with_lifetimes({"accessTtlS": 0})


def test_installation_locations_appends_generated_ones() -> None:
    assert installation_locations(["a"], 2) == ["a", "oauth-location-01", "oauth-location-02"]
    assert installation_locations([], 100)[-1] == "oauth-location-100"
