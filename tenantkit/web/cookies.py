"""Cookie names as the application behind the shim will read them.

The page cache must bypass a request whose cookies make the page personal (a logged-in user,
a commenter's pending comment, a password-protected post, a read-your-writes pin). The
application decides what is personal by the cookie *names it sees*, and those are not always
the bytes on the wire. PHP (8.x, ``main/php_variables.c``) reads ``Cookie:`` like this:

- the header is split on ``;`` only -- quotes mean nothing, ``,`` separates nothing;
- leading white space is dropped from a name; an empty name is skipped; names are not
  URL-decoded (they were before PHP 7.4.11: CVE-2020-7070), values are;
- in a name, ``.`` and space become ``_``;
- ``[`` starts an array index when a ``]`` follows it somewhere: the name is what comes
  before it (``comment_author_x[a]`` is ``comment_author_x``). Without a ``]`` after it, that
  ``[`` and every later space, ``.`` or ``[`` become ``_``.

So ``comment.author.HASH`` and ``wp-postpass.HASH`` reach WordPress as
``comment_author_HASH`` and ``wp-postpass_HASH``. :func:`cookie_names` gives every name a
request carries as PHP reads it, as it is written, and as werkzeug's
:func:`~werkzeug.http.parse_cookie` (Flask and other WSGI apps) reads it -- whichever way an
application splits the header, if it can see a bypass cookie, so does the shim::

    from tenantkit.web.cookies import has_bypass_cookie
    has_bypass_cookie("theme=dark; comment.author.5f3=Eve", ["comment_author_"])   # True

The nginx export (:func:`tenantkit.export.nginx.render_config`) matches the same spellings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from werkzeug.http import parse_cookie

__all__ = ["cookie_names", "has_bypass_cookie", "php_cookie_name"]

#: C's isspace(): what PHP strips from the front of a cookie name.
_LEADING = " \t\n\v\f\r"
_MANGLED = re.compile(r"[ .\[]")


def php_cookie_name(name: str) -> str | None:
    """The key PHP gives a cookie written *name* in ``$_COOKIE``; None when PHP skips it."""
    name = name.split("\0", 1)[0].lstrip(_LEADING)
    out: list[str] = []
    for i, char in enumerate(name):
        if char == " " or char == ".":
            out.append("_")
        elif char == "[":
            base = "".join(out)
            if "]" in name[i + 1:]:
                return base or None  # an array: $_COOKIE[base][...]
            return base + "_" + _MANGLED.sub("_", name[i + 1:])
        else:
            out.append(char)
    return "".join(out) or None


def cookie_names(header: str) -> frozenset[str]:
    """Every cookie name in a ``Cookie`` header, as written and as PHP and werkzeug read it."""
    names: set[str] = set()
    for part in header.split(";"):
        written = part.partition("=")[0]
        names.add(written.strip())
        php = php_cookie_name(written)
        if php is not None:
            names.add(php)
    names.update(parse_cookie(header).keys())
    names.discard("")
    return frozenset(names)


def has_bypass_cookie(header: str, prefixes: Iterable[str]) -> bool:
    """True when a cookie in *header*, read by any of the rules above, starts with one of
    *prefixes* (each also taken as PHP would spell it)."""
    if not header:
        return False
    wanted = set()
    for prefix in prefixes:
        if prefix:
            wanted.add(prefix)
            wanted.add(prefix.replace(".", "_").replace(" ", "_"))
    if not wanted:
        return False
    starts = tuple(wanted)
    return any(name.startswith(starts) for name in cookie_names(header))
