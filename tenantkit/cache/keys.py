"""What the page cache names on disk: a page's key (its directory), tag and URL index names.

::

    page_key("blog.example.org", "/2024/hello/")        # 'blog.example.org/2024/hello'
    page_key("blog.example.org", "/search", "q=x")      # '.q/blog.example.org/ab/<sha256>'
    tag_name("post:42")                                 # 't-post:42'

Keys that nginx can serve (no query, a path ending in ``/``, safe segments: no ``%`` escapes,
no segment named ``index.html``) are the URL's own path under the host; every other key goes
under the hashed query tree. Names starting with a dot never come from a URL, so sidecars,
indexes and temporary files cannot collide with pages.
"""

from __future__ import annotations

import functools
import hashlib
import re

from tenantkit.errors import CacheError, InvalidHost
from tenantkit.hosts import normalize_host
from tenantkit.layout import BODY

__all__ = ["QUERY_TREE", "check_host", "key_hash", "page_key", "safe_host", "tag_name",
           "url_name"]

#: The directory of every key nginx cannot serve (query strings, odd paths).
QUERY_TREE = ".q"

MAX_SEGMENT = 200
MAX_DEPTH = 32
MAX_NGINX_PATH = 1024

_SAFE_HOST = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*|\[[0-9a-f:.]{2,45}\]").fullmatch
# Path segments that may become directory names of the nginx tree: no dot first (that rules
# out ".", "..", our sidecars and temp files), nothing a shell or nginx would treat oddly, and
# no "%": nginx looks pages up by the decoded $uri, so a raw path with an escape in it could
# name another URL's directory ("/a%2Fb/" and "/a/b/", issue 16). Such paths are hashed.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@-][A-Za-z0-9._~!$&'()*+,;=:@-]*").fullmatch
#: Segments that are the name of a page's own file: "/index.html/" must not turn the home
#: page's body file into a directory.
_FILE_NAMES = frozenset({BODY})
_SAFE_TAG = re.compile(r"[A-Za-z0-9_:=@+-][A-Za-z0-9_:=@+.-]{0,99}").fullmatch


def key_hash(*parts: str) -> str:
    """The sha256 (hex) of *parts* joined by NUL."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def safe_host(name: str) -> bool:
    """True when *name* may be a host directory of a generation (read back from disk)."""
    return _SAFE_HOST(name) is not None


def check_host(host: str) -> str:
    """*host* normalised, or :class:`CacheError` when it cannot be a directory name."""
    try:
        normal = normalize_host(host) if isinstance(host, str) else ""
    except InvalidHost as exc:
        raise CacheError(f"page cache: not a normalised host name: {exc}") from None
    # normalize_host already refuses anything that is not a safe name; checked again because
    # this string becomes a directory name.
    if not _SAFE_HOST(normal) or len(normal) > 253:
        shown = host if not isinstance(host, str) or len(host) <= 80 else host[:77] + "..."
        raise CacheError(
            f"page cache: host {shown!r} is not a normalised host name (pass the request's "
            "host after normalize_host: lowercase, no port, IPv6 in brackets)"
        )
    return normal


@functools.lru_cache(maxsize=8192)
def page_key(host: str, path: str, query: str = "") -> str:
    """The page's directory relative to a generation: ``host/a/b`` for nginx-servable keys,
    ``.q/host/ab/<sha256>`` for every other key. Raises :class:`CacheError` for a bad host or a
    path that does not start with ``/``."""
    normal = check_host(host)
    if not isinstance(path, str) or not path.startswith("/"):
        raise CacheError(f"page cache: path {path!r} must start with '/' (pass the URL path)")
    if not query and path.endswith("/") and len(path) <= MAX_NGINX_PATH:
        segments = path[1:-1].split("/") if path != "/" else []
        if len(segments) <= MAX_DEPTH and all(
            len(s) <= MAX_SEGMENT and _SAFE_SEGMENT(s) and s not in _FILE_NAMES
            for s in segments
        ):
            return "/".join([normal, *segments])
    digest = key_hash(normal, path, query)
    return f"{QUERY_TREE}/{normal}/{digest[:2]}/{digest}"


def tag_name(tag: str) -> str:
    """The index and purge-marker name of a tag."""
    if not isinstance(tag, str) or not tag:
        raise CacheError(f"page cache: tag {tag!r} must be a non-empty string")
    return "t-" + tag if _SAFE_TAG(tag) else "h-" + key_hash(tag)


def url_name(host: str, path: str) -> str:
    """The index and purge-marker name of a URL path (every query string of it)."""
    return "u-" + key_hash(host, path)[:40]
