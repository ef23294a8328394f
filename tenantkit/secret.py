"""URLs that never show their password.

::

    url = SecretURL("mysql+pymysql://app:s3cret@db1/blog")
    f"connecting to {url}"      # 'connecting to mysql+pymysql://app:********@db1/blog'
    log.info("primary %s", url)  # masked too: str(), repr(), format() and % all mask
    create_engine(url)          # drivers and parsers read the real characters
    url.reveal()                # the plain str, for code that must print the password

Settings and site files hold their database, Redis and upstream URLs as :class:`SecretURL`, so
a log line or an error message cannot leak a password by forgetting to mask it.
:func:`mask_url` masks any text that contains URLs (for plain strings from elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["MASK", "SecretURL", "mask_url", "scrub"]

MASK = "********"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def mask_url(text: str, *, whole: bool = False) -> str:
    """*text* with the password of every ``scheme://user:password@host`` in it replaced by
    ``********``. The password runs from the first ``:`` of the user part to the last ``@``
    that is not past a space after the first ``@`` (with *whole*, *text* is one URL and the
    password runs to its last ``@``), so passwords holding ``@``, ``/``, ``?``, spaces or
    quotes are masked whole, and a message's ``'app'@'host'`` after a URL is left alone.

    >>> mask_url("mysql+pymysql://app:s3cret@db/app")
    'mysql+pymysql://app:********@db/app'
    >>> mask_url("mysql://app:p@ss@db/app: denied for 'app'@'10.0.0.1'")
    "mysql://app:********@db/app: denied for 'app'@'10.0.0.1'"
    >>> mask_url("redis://:pw@127.0.0.1:6379/0")
    'redis://:********@127.0.0.1:6379/0'
    """
    text = str.__str__(text)
    matches = list(_SCHEME.finditer(text))
    if not matches:
        return text
    out = [text[:matches[0].end()]]
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        part, tail = text[match.end():end], text[end:matches[index + 1].end()] if (
            index + 1 < len(matches)) else ""
        out.append(_mask_one(part, whole) + tail)
    return "".join(out)


def _password(url: str) -> str:
    """The password of one URL (to its last ``@``), "" when it has none."""
    match = _SCHEME.match(url)
    if match is None:
        return ""
    masked = _mask_one(url[match.end():], True)
    rest = url[match.end():]
    colon = masked.find(MASK)
    if colon < 0:
        return ""
    return rest[colon:len(rest) - (len(masked) - colon - len(MASK))]


def scrub(text: str, urls: Iterable[str]) -> str:
    """*text* -- a driver's error message, say -- with every URL in it masked, and every
    piece of the passwords of *urls* a parser may have split off and quoted on its own
    (``Can't connect to MySQL server on 'w@rd@db'``) replaced by ``********``: the
    password, decoded or not, and its parts between ``@``, ``:`` and ``/`` (3 characters
    or more)."""
    text = mask_url(text)
    pieces: set[str] = set()
    tails: set[str] = set()  # what a parser splitting at the first "@" takes for the host
    for url in urls:
        password = _password(str.__str__(url))
        for form in {password, unquote(password)}:
            if form:
                pieces.add(form)
                pieces.update(re.split(r"[@:/\s]", form))
                tails.update(form.split("@", i)[i] for i in range(1, form.count("@") + 1))
    for tail in sorted(tails, key=len, reverse=True):
        text = text.replace(tail + "@", MASK + "@")
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 3:
            text = text.replace(piece, MASK)
    return text


def _mask_one(rest: str, whole: bool) -> str:
    """*rest* (a URL after its ``scheme://``, and maybe text after it) with its password
    masked."""
    colon = -1
    for i, ch in enumerate(rest):  # the user part ends at the first ':' before any '@' or '/'
        if ch == ":":
            colon = i
            break
        if ch in "@/\n":
            return rest
    first_at = rest.find("@", colon + 1)
    if colon < 0 or first_at < 0:
        return rest
    if whole:
        last_at = rest.rfind("@")
    else:
        space = re.search(r"\s", rest[first_at:])
        window = rest[:first_at + space.start()] if space else rest
        last_at = window.rfind("@")
    return rest[:colon + 1] + MASK + rest[last_at:]


class SecretURL(str):
    """A URL whose ``str()``, ``repr()``, ``format()`` and ``%`` show it masked. It is a
    ``str``: parsers (SQLAlchemy's ``make_url``, ``redis.from_url``, urllib) and slicing or
    concatenation see the real characters; :meth:`reveal` gives them as a plain ``str``."""

    __slots__ = ()

    def __new__(cls, value: str) -> SecretURL:
        # str(value) would call a SecretURL's own __str__, which masks.
        return super().__new__(cls, str.__str__(value))

    def reveal(self) -> str:
        """The URL with its password, as a plain ``str``."""
        return str.__str__(self)

    def __str__(self) -> str:
        return mask_url(self.reveal(), whole=True)

    def __repr__(self) -> str:
        return repr(str(self))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def secret_url(value: str | None) -> SecretURL | None:
    """*value* as a :class:`SecretURL` (None stays None)."""
    return None if value is None else SecretURL(value)
