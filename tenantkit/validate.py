"""The one home of the rules for names and URLs that come from the outside (site files,
settings, command lines, events). Each function answers yes or no; the caller raises its own
error, with a message that says where the value came from and what to write instead::

    if not is_site_name(name):
        raise InvalidSiteName(f"invalid site name {name!r}: ...")

Host names and patterns have their own module, :mod:`tenantkit.hosts`.
"""

from __future__ import annotations

import math
import re
from typing import TypeGuard

__all__ = ["MAX_CONCURRENCY", "MAX_NUMBER", "MAX_SECONDS", "MAX_TIMEOUT", "SITE_NAME_RE",
           "is_database_url", "is_header", "is_http_url", "is_number", "is_site_name",
           "is_whole_number"]

#: The largest number any setting may hold: past it, time arithmetic (``time.time() + ttl``)
#: overflows a float and one site file would fail every request.
MAX_NUMBER = 2**53
#: The longest a cache duration (``ttl``, ``stale_seconds``, ``stale_if_error``) may be: a year.
MAX_SECONDS = 365 * 24 * 3600
#: The longest backend timeout (``connect_timeout``, ``read_timeout``): an hour. A socket
#: refuses more than its clock holds (``1e300``), and a longer wait holds a thread for good.
MAX_TIMEOUT = 3600.0
#: The most requests one site's backend may serve at once in a worker; each one is a
#: pooled upstream connection allocated up front.
MAX_CONCURRENCY = 10_000

#: A site name: 1 to 63 lowercase letters, digits and '-', starting with a letter or digit.
#: It becomes a directory name under cache_dir and a file name under sites_dir.
SITE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: An HTTP header name (RFC 9110 token) and value (visible Latin-1, spaces and tabs: no CR,
#: LF or NUL, nothing a WSGI server cannot encode).
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,16384}")
_HTTP_URL_RE = re.compile(r"https?://[^\s/?#@]+(?::[0-9]{1,5})?(?:/[^\s]*)?")


def is_site_name(value: object) -> TypeGuard[str]:
    """True for a valid site name (:data:`SITE_NAME_RE`)."""
    return isinstance(value, str) and SITE_NAME_RE.fullmatch(value) is not None


def is_http_url(value: object) -> TypeGuard[str]:
    """True for an ``http://`` or ``https://`` URL with a host, no credentials, no spaces."""
    return isinstance(value, str) and _HTTP_URL_RE.fullmatch(value) is not None


def is_database_url(value: object) -> TypeGuard[str]:
    """True for something shaped like a database URL (``scheme://...``, no whitespace);
    SQLAlchemy reads the rest when it connects."""
    return (isinstance(value, str) and "://" in value
            and not any(ch.isspace() for ch in value))


def is_number(value: object, *, minimum: float, maximum: float = MAX_NUMBER,
              above: bool = False) -> TypeGuard[int | float]:
    """True for an int or float (not a bool), finite (no ``nan``/``inf``, which TOML
    accepts) and within ``minimum`` (excluded when *above*) .. *maximum*::

        is_number(5.0, minimum=0, above=True, maximum=MAX_TIMEOUT)    # True
        is_number(float("nan"), minimum=0)                             # False
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (value > minimum if above else value >= minimum) and value <= maximum


def is_whole_number(value: object, *, minimum: int, maximum: int = MAX_NUMBER
                    ) -> TypeGuard[int]:
    """True for an int (not a bool) within ``minimum`` .. *maximum*."""
    return isinstance(value, int) and is_number(value, minimum=minimum, maximum=maximum)


def is_header(name: object, value: object) -> bool:
    """True for a header a WSGI server can send as it is: ``is_header("X-A", "1")``;
    False for ``("X-A", "1\\r\\nSet-Cookie: x")``, a name with a space, a lone surrogate."""
    return (isinstance(name, str) and isinstance(value, str)
            and _HEADER_NAME_RE.fullmatch(name) is not None
            and _HEADER_VALUE_RE.fullmatch(value) is not None)
