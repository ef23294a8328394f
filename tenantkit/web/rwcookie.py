"""The shim's read-your-writes cookie: a consistency token, signed, carried between requests.

::

    cookie = TokenCookie(secret_key, max_age=5)
    start_response("200 OK", [..., ("Set-Cookie", cookie.header(token, secure=True))])
    token = cookie.read(environ.get("HTTP_COOKIE", ""))      # None unless fresh and ours

The value is signed and timestamped by itsdangerous; the cookie is HttpOnly, SameSite=Lax,
``Path=/``, lives ``max_age`` seconds, and is parsed and written by werkzeug. The environ keys
carry the token to and from a site app (see :mod:`tenantkit.web.consistency`).
"""

from __future__ import annotations

from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.http import dump_cookie, parse_cookie

from tenantkit.config import RYW_COOKIE
from tenantkit.db.router import ConsistencyToken
from tenantkit.errors import TenantkitError

__all__ = ["TOKEN_HEADER", "TOKEN_IN", "TOKEN_OUT", "TokenCookie"]

#: The token of a request, from its cookie, for the site app's router.
TOKEN_IN = "tenantkit.consistency_token"
#: The token of a request that wrote, set by the site app.
TOKEN_OUT = "tenantkit.write_token"
#: The response header an app (e.g. over HTTP) may send the token in; never reaches the client.
TOKEN_HEADER = "x-tenantkit-token"
#: Longer tokens are refused unread.
MAX_TOKEN = 4096


class TokenCookie:
    """Signs and checks the read-your-writes cookie."""

    def __init__(self, secret_key: str | bytes, *, max_age: float = 5.0,
                 name: str = RYW_COOKIE) -> None:
        self.serializer = URLSafeTimedSerializer(secret_key, salt="tenantkit-read-your-writes")
        self.max_age = max(1, round(max_age))
        self.name = name

    def header(self, token: str, *, secure: bool = False) -> str:
        """The ``Set-Cookie`` value carrying *token*."""
        return dump_cookie(self.name, self.serializer.dumps(token), max_age=self.max_age,
                           path="/", secure=secure, httponly=True, samesite="Lax")

    def read(self, cookie_header: str) -> str | None:
        """The token in a fresh, correctly signed cookie, else None (never raises)."""
        if self.name not in cookie_header:
            return None
        value = parse_cookie(cookie_header).get(self.name)
        return None if value is None else self._loads(value)

    def _loads(self, value: str) -> str | None:
        try:
            token = self.serializer.loads(value, max_age=self.max_age)
        except (BadData, UnicodeError, ValueError):
            return None
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        try:
            ConsistencyToken.loads(token)
        except TenantkitError:
            return None  # signed by us but not a token: a key shared with something else
        return token
