"""The one home of the rules for names and URLs that come from the outside (site files,
settings, command lines, events). Each function answers yes or no; the caller raises its own
error, with a message that says where the value came from and what to write instead::

    if not is_site_name(name):
        raise InvalidSiteName(f"invalid site name {name!r}: ...")

Host names and patterns have their own module, :mod:`tenantkit.hosts`.
"""

from __future__ import annotations

import re
from typing import TypeGuard

__all__ = ["SITE_NAME_RE", "is_database_url", "is_http_url", "is_site_name"]

#: A site name: 1 to 63 lowercase letters, digits and '-', starting with a letter or digit.
#: It becomes a directory name under cache_dir and a file name under sites_dir.
SITE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
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
