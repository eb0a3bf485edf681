"""Who may see the portal: nobody but this machine, a shared token, or a Globus group.

- Bound to a loopback address with no token configured: open (only this machine's
  users reach it; an SSH tunnel brings remote people in).
- ``PTYCHOFLOW_PORTAL_TOKEN`` set: every request needs it, as an
  ``Authorization: Bearer`` header, or once as ``?token=`` which sets an HttpOnly
  SameSite=Strict cookie (and redirects to the same page without the token).
  Compared in constant time.
- ``[portal] globus_group``: people log in with Globus Auth (authorization-code
  flow of the portal's confidential client) and must be members of the group
  (Groups API, ``get_my_groups``). The session lives in this process's memory.

Any other address with neither is refused at start (:func:`check_exposure`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from http.cookies import SimpleCookie
from typing import Any

from portal.errors import LoginError, PortalConfigError

TOKEN_ENV = "PTYCHOFLOW_PORTAL_TOKEN"
CLIENT_SECRET_ENV = "PTYCHOFLOW_PORTAL_CLIENT_SECRET"
TOKEN_COOKIE = "ptychoflow_portal"
SESSION_COOKIE = "ptychoflow_session"
STATE_COOKIE = "ptychoflow_login_state"
#: How long a Globus login lasts, seconds.
SESSION_SECONDS = 12 * 3600
#: How long a started login may take, seconds.
LOGIN_SECONDS = 600
#: Paths that need no credentials (the login itself, the style sheet and script).
OPEN_PREFIXES = ("/login", "/static/")


#: Shortest token accepted, characters.
MIN_TOKEN_LENGTH = 32
#: Fewest distinct characters a token must hold (a random 32-character URL-safe token
#: has about 24; ``aaaa...`` or 32 spaces have 1).
MIN_TOKEN_DISTINCT = 12
#: How to make a good token (named in refusals and the README).
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_token_strength(token: str) -> None:
    """Refuse a token that is short, holds whitespace or control characters, or has too
    few distinct characters to be random (:class:`PortalConfigError`)."""
    problem = None
    if len(token) < MIN_TOKEN_LENGTH:
        problem = f"is {len(token)} characters long; at least {MIN_TOKEN_LENGTH} are needed"
    elif any(ch.isspace() or not ch.isprintable() for ch in token):
        problem = "holds spaces or control characters"
    elif len(set(token)) < MIN_TOKEN_DISTINCT:
        problem = (
            f"has only {len(set(token))} distinct characters (at least {MIN_TOKEN_DISTINCT}); "
            "it is not random"
        )
    if problem is not None:
        raise PortalConfigError(f"{TOKEN_ENV} {problem}. Make one with: {MAKE_TOKEN}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_cookie_value(token: str) -> str:
    """What the cookie holds: a keyed hash of the token, not the token itself."""
    return hmac.new(token.encode(), b"ptychoflow portal session", hashlib.sha256).hexdigest()


class GlobusGroupLogin:
    """Globus Auth login of the portal's confidential client, allowed for one group."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        group_id: str,
        redirect_uri: str,
        auth_client: Any = None,
    ) -> None:
        import globus_sdk

        self.group_id = group_id
        self.redirect_uri = redirect_uri
        self.auth_client = auth_client or globus_sdk.ConfidentialAppAuthClient(
            client_id, client_secret
        )
        self.scopes = [
            "openid",
            "profile",
            str(globus_sdk.scopes.GroupsScopes.view_my_groups_and_memberships),
        ]

    def _flow(self, state: str) -> Any:
        from globus_sdk.services.auth.flow_managers import GlobusAuthorizationCodeFlowManager

        return GlobusAuthorizationCodeFlowManager(
            self.auth_client, self.redirect_uri, requested_scopes=self.scopes, state=state
        )

    def authorize_url(self, state: str) -> str:
        return str(self._flow(state).get_authorize_url())

    def complete(self, code: str, state: str) -> str:
        """Exchange the code, check the group; returns the member's username."""
        import globus_sdk

        try:
            tokens = self._flow(state).exchange_code_for_tokens(code)
            groups_token = tokens.by_resource_server["groups.api.globus.org"]["access_token"]
        except (globus_sdk.GlobusAPIError, KeyError) as err:
            raise LoginError(f"Globus Auth did not accept the login: {err}") from err
        groups = globus_sdk.GroupsClient(authorizer=globus_sdk.AccessTokenAuthorizer(groups_token))
        try:
            memberships = groups.get_my_groups()
        except globus_sdk.GlobusAPIError as err:
            raise LoginError(f"could not read the group memberships: {err}") from err
        for group in memberships:
            if group.get("id") != self.group_id:
                continue
            for membership in group.get("my_memberships") or []:
                if membership.get("status") == "active":
                    return str(membership.get("username") or membership.get("identity_id"))
        raise LoginError("not an active member of the portal's Globus group")


@dataclasses.dataclass
class AccessPolicy:
    """How requests are let in: open, by token, or by Globus login."""

    token: str | None = None
    globus: GlobusGroupLogin | None = None
    sessions: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def open(self) -> bool:
        return self.token is None and self.globus is None

    def allows(self, headers: dict[str, str], cookies: dict[str, str]) -> bool:
        if self.open:
            return True
        if self.token is not None:
            authorization = headers.get("authorization", "")
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                value.strip().encode(), self.token.encode()
            ):
                return True
            cookie = cookies.get(TOKEN_COOKIE, "")
            if cookie and hmac.compare_digest(
                cookie.encode(), token_cookie_value(self.token).encode()
            ):
                return True
        if self.globus is not None:
            return self.session_user(cookies.get(SESSION_COOKIE, "")) is not None
        return False

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def new_session(self, user: str) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            for key in [k for k, (_, expiry) in self.sessions.items() if expiry < now]:
                del self.sessions[key]
            self.sessions[session] = (user, now + SESSION_SECONDS)
        return session

    def session_user(self, session: str) -> str | None:
        if not session:
            return None
        with self._lock:
            entry = self.sessions.get(session)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]


def parse_cookies(header: str) -> dict[str, str]:
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except Exception:  # a malformed Cookie header is treated as no cookies
        return {}
    return {name: morsel.value for name, morsel in cookies.items()}


def check_exposure(host: str, policy: AccessPolicy) -> None:
    """Refuse to serve a non-loopback address with no access control."""
    if is_loopback(host) or not policy.open:
        return
    raise PortalConfigError(
        f"refusing to serve on {host}: anyone who can reach it would see the results. "
        f"Set {TOKEN_ENV} (a long random string people pass once as ?token=), or "
        "[portal] globus_group with client_id and public_url (Globus Auth login), or "
        "keep the default --host 127.0.0.1 and use an SSH tunnel"
    )
