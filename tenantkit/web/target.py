"""The request target: the one answer to "which URL is this request for", shared by the page
cache's key and the HTTP upstream proxy, so that a page is always stored under exactly the
target the upstream rendered it for (issue 16)::

    path, query = request_target(environ)   # raw, as the client sent it: "/a%2Fb/", "x=1"
    key_query = cache_query(query, site.cache.ignore_query_args)   # without utm_* & co.

The target is the raw ``RAW_URI`` (gunicorn) or ``REQUEST_URI`` (werkzeug, mod_wsgi, uWSGI)
when the server gives one in origin form; otherwise it is rebuilt from ``SCRIPT_NAME``,
``PATH_INFO`` and ``QUERY_STRING``. :func:`untrusted_script_name` undoes a ``SCRIPT_NAME``
request header (gunicorn believes it from its ``forwarded_allow_ips``, 127.0.0.1 by
default): the shim is always mounted at the root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from tenantkit.config import DEFAULT_IGNORED_QUERY_ARGS

__all__ = ["DEFAULT_IGNORED_QUERY_ARGS", "cache_query", "request_target",
           "untrusted_script_name"]

_SAFE = "/:@!$&'()*+,;=~%"


def request_target(environ: Mapping[str, Any]) -> tuple[str, str]:
    """(path, query) of the request as sent by the client: raw, not percent-decoded."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        path, _, query = raw.partition("?")
        return path, query
    script = str(environ.get("SCRIPT_NAME", ""))
    path = quote(script + str(environ.get("PATH_INFO", "")), safe=_SAFE, encoding="latin-1")
    return path or "/", str(environ.get("QUERY_STRING", ""))


def cache_query(query: str, ignored: Iterable[str]) -> str:
    """*query* without the arguments named in *ignored* (a trailing ``*`` matches a prefix);
    the others keep their order and spelling."""
    if not query:
        return query
    names = tuple(ignored)
    if not names:
        return query
    exact = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    kept = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        if name in exact or (prefixes and name.startswith(prefixes)):
            continue
        kept.append(part)
    return "&".join(kept)


def untrusted_script_name(environ: dict[str, Any]) -> None:
    """Undo a ``SCRIPT_NAME`` that came from a request header: the path is whole again."""
    if "HTTP_SCRIPT_NAME" not in environ:
        return
    del environ["HTTP_SCRIPT_NAME"]
    script = environ.get("SCRIPT_NAME") or ""
    if script:
        environ["PATH_INFO"] = script + (environ.get("PATH_INFO") or "")
        environ["SCRIPT_NAME"] = ""
