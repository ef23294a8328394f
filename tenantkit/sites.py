"""Sites: one TOML file per site in ``sites_dir``, parsed into a frozen :class:`Site`.

This module holds the data model every other part of tenantkit shares, and the parsing and
validation of site files::

    site = load_site(Path("sites/blog.toml"), settings)
    site.hosts          # ('blog.example.org', '*.blog.example.org')
    site.pages_dir      # settings.cache_dir / "blog" / "pages"

A site file (``sites/<name>.toml``; every table optional but ``hosts`` and ``[backend]``)::

    hosts = ["blog.example.org", "*.blog.example.org"]

    [backend]
    type = "proxy"                      # or "wsgi" with app = "module:attr"
    url = "http://127.0.0.1:8080"
    max_concurrency = 4                 # requests at once per worker process; more: 503
    connect_timeout = 5.0               # seconds (proxy only)
    read_timeout = 60.0                 # seconds without a byte from the upstream (proxy)

    [database]                          # default: the global [database] settings
    primary = "mysql+tenantkit://app:secret@db1.internal/blog?compress=true"
    replicas = ["mysql+pymysql://app:secret@127.0.0.1/blog"]
    table_prefix = "wp_"

    [cache]                             # defaults: the global [cache] settings
    enabled = true
    ttl = 300
    policy = "site"                     # or "targeted"
    bypass_cookies = ["wordpress_logged_in_"]
    stale_if_error = 300                # serve a page purged or expired this long ago
                                        # when the backend fails
    rewarm = false                      # re-fetch purged URLs in the background

    [meta]                              # free-form, kept as is
    owner = "team-blog"

Anything else raises :class:`~tenantkit.errors.SiteFileError` naming the file, the key, what
was found and what is allowed. Passwords never appear in ``repr`` or messages.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from tenantkit import layout
from tenantkit.config import CacheSettings, Settings, did_you_mean, keep_urls_secret, mask_url
from tenantkit.errors import InvalidHost, SiteError, SiteFileError
from tenantkit.files import NotARegularFile, read_regular_file
from tenantkit.hosts import normalize_patterns
from tenantkit.validate import (
    MAX_CONCURRENCY,
    MAX_NUMBER,
    MAX_SECONDS,
    MAX_TIMEOUT,
    is_database_url,
    is_http_url,
    is_number,
    is_site_name,
    is_whole_number,
)

__all__ = [
    "MAX_SITE_FILE_BYTES",
    "Backend",
    "InvalidSiteName",
    "Site",
    "SiteCache",
    "SiteDatabase",
    "load_site",
    "parse_backend_spec",
    "site_document",
    "site_file_problems",
    "site_from_document",
    "validate_name",
]

#: A site file larger than this is refused (a site file is a few hundred bytes).
MAX_SITE_FILE_BYTES = 256 * 1024

_APP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
                     r":[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_]{0,64}")


class InvalidSiteName(SiteError, ValueError):
    """A site name is not ``^[a-z0-9][a-z0-9-]{0,62}$``."""


def validate_name(name: object) -> str:
    """Return *name* if it is a valid site name, else raise :class:`InvalidSiteName`."""
    if not is_site_name(name):
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:77] + "..."
        raise InvalidSiteName(
            f"invalid site name {shown!r}: a site name is 1 to 63 lowercase letters, digits "
            "and '-', starting with a letter or digit (for example blog or shop-eu)"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Backend:
    """What serves a site: an in-process WSGI app or an HTTP upstream.

    ``Backend(type="wsgi", app="myapp.wsgi:application")`` (the attribute is a WSGI app, or a
    factory called with the :class:`Site`), or ``Backend(type="proxy", url="http://127.0.0.1:8080")``.
    """

    type: Literal["wsgi", "proxy"]
    app: str | None = None
    url: str | None = field(default=None, metadata={"url": True})
    #: Requests this backend serves at once in one worker process; one more answers 503
    #: with ``Retry-After`` at once (:class:`tenantkit.web.backends.BackendPool`).
    max_concurrency: int = 4
    #: Seconds to connect to a proxy upstream, and without a byte from it.
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        keep_urls_secret(self)


@dataclass(frozen=True, kw_only=True)
class SiteDatabase:
    """A site's database; ``primary=None`` means the global ``[database]`` settings.

    ``primaries`` lists failover candidates instead of one ``primary`` (then ``primary`` is
    the first of them); ``on_primary_down=None`` follows the global setting.
    """

    primary: str | None = field(default=None, metadata={"url": True})
    replicas: tuple[str, ...] = field(default=(), metadata={"url": True})
    table_prefix: str = ""
    primaries: tuple[str, ...] = field(default=(), metadata={"url": True})
    on_primary_down: Literal["error", "read_only"] | None = None

    def __post_init__(self) -> None:
        if self.primaries:
            object.__setattr__(self, "primary", self.primaries[0])
        keep_urls_secret(self)


#: A site's page-cache policy: the same type as the global ``[cache]`` defaults.
SiteCache = CacheSettings


def _no_settings_cache() -> CacheSettings:
    # A Site built in code without a cache policy bypasses on no cookie (site files get the
    # settings' policy, bypass cookies included, from load_site).
    return CacheSettings(bypass_cookies=())


@dataclass(frozen=True, kw_only=True)
class Site:
    """One site. ``hosts`` holds normalised patterns; ``cache_root`` is ``cache_dir/<name>``.

    The cache tree: ``cache_root/pages`` (page cache), ``cache_root/app`` (the application's own
    cache files), ``cache_root/tmp`` and ``cache_root/.purge`` (trigger files).
    """

    name: str
    hosts: tuple[str, ...]
    backend: Backend
    database: SiteDatabase = field(default_factory=SiteDatabase)
    cache: CacheSettings = field(default_factory=_no_settings_cache)
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)
    cache_root: Path = Path("cache")
    path: Path | None = field(default=None, compare=False)

    @property
    def pages_dir(self) -> Path:
        return layout.pages_dir(self.cache_root)

    @property
    def app_cache_dir(self) -> Path:
        return layout.app_dir(self.cache_root)

    @property
    def tmp_dir(self) -> Path:
        return layout.tmp_dir(self.cache_root)

    @property
    def purge_dir(self) -> Path:
        return layout.purge_dir(self.cache_root)


# --- parsing ------------------------------------------------------------------------------


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_url(value, whole=True)  # a value from the file is one URL
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


class _Where:
    """Builds messages ``site file <path>: key "<key>": ...``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str) -> SiteFileError:
        return SiteFileError(f"site file {self.path}: {message}")

    def bad(self, key: str, expected: str, got: Any, fix: str) -> SiteFileError:
        shown = repr(_masked(got))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return self.error(f'key "{key}": expected {expected}, got {shown} ({fix})')

    def unknown(self, key: str, allowed: Mapping[str, object] | tuple[str, ...]) -> SiteFileError:
        hint = did_you_mean(key.rsplit(".", 1)[-1], allowed)
        return self.error(f'key "{key}": unknown key{hint} (allowed: '
                          f'{", ".join(sorted(allowed))})')


def _table(w: _Where, doc: Mapping[str, Any], key: str, allowed: tuple[str, ...]
           ) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise w.bad(key, "a table", value, f"write [{key}] on a line of its own")
    for sub in value:
        if sub not in allowed:
            raise w.unknown(f"{key}.{sub}", allowed)
    return value


def _get_str(w: _Where, key: str, value: Any, fix: str) -> str:
    if not isinstance(value, str):
        raise w.bad(key, "a string", value, fix)
    return value


def _get_int(w: _Where, key: str, value: Any, minimum: int, maximum: int = MAX_NUMBER) -> int:
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, bool) or not isinstance(value, int):
        raise w.bad(key, "a whole number", value, f"write {name} = 300")
    if not is_whole_number(value, minimum=minimum, maximum=maximum):
        raise w.bad(key, f"a whole number from {minimum} to {maximum}", value,
                    f"write {name} = {max(minimum, min(300, maximum))}")
    return value


def _get_seconds(w: _Where, key: str, value: Any) -> float:
    if not is_number(value, minimum=0, above=True, maximum=MAX_TIMEOUT):
        raise w.bad(key, f"a number of seconds > 0 and <= {MAX_TIMEOUT:g}", value,
                    f"write {key.rsplit('.', 1)[-1]} = 5.0")
    return float(value)


def _get_str_list(w: _Where, key: str, value: Any, example: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        name = key.rsplit(".", 1)[-1]
        raise w.bad(key, "a list of strings", value, f'write {name} = ["{example}"]')
    return tuple(value)


def _hosts(w: _Where, doc: Mapping[str, Any]) -> tuple[str, ...]:
    if "hosts" not in doc:
        raise w.error('key "hosts": missing (write hosts = ["blog.example.org"])')
    value = doc["hosts"]
    if isinstance(value, str):
        raise w.bad("hosts", "a list of host names", value, f"write hosts = [{value!r}]")
    items = _get_str_list(w, "hosts", value, "blog.example.org")
    if not items:
        raise w.bad("hosts", "a non-empty list of host names", value,
                    'write hosts = ["blog.example.org"]')
    try:
        return normalize_patterns(items)
    except InvalidHost as exc:
        raise w.error(f'key "hosts[{exc.index}]": {exc}') from None


def _backend(w: _Where, doc: Mapping[str, Any]) -> Backend:
    if "backend" not in doc:
        raise w.error(
            'table "backend": missing (write [backend] with type = "proxy" and '
            'url = "http://127.0.0.1:8080", or type = "wsgi" and app = "module:attr")'
        )
    table = _table(w, doc, "backend", ("app", "connect_timeout", "max_concurrency",
                                       "read_timeout", "type", "url"))
    kind = table.get("type")
    limit = _get_int(w, "backend.max_concurrency",
                     table.get("max_concurrency", Backend.max_concurrency), 1, MAX_CONCURRENCY)
    if kind == "wsgi":
        for key in ("url", "connect_timeout", "read_timeout"):
            if key in table:
                raise w.error(f'key "backend.{key}": only for type = "proxy" (remove it)')
        app = _get_str(w, "backend.app", table.get("app"), 'write app = "module:attr"')
        if not _APP_RE.fullmatch(app):
            raise w.bad("backend.app", '"module:attr"', app, 'write app = "myapp.wsgi:application"')
        return Backend(type="wsgi", app=app, max_concurrency=limit)
    if kind == "proxy":
        if "app" in table:
            raise w.error('key "backend.app": only for type = "wsgi" (remove it, or use url)')
        url = _get_str(w, "backend.url", table.get("url"), 'write url = "http://127.0.0.1:8080"')
        if not is_http_url(url):
            raise w.bad("backend.url", "an http:// or https:// URL", url,
                        'write url = "http://127.0.0.1:8080"')
        return Backend(
            type="proxy", url=url, max_concurrency=limit,
            connect_timeout=_get_seconds(w, "backend.connect_timeout",
                                         table.get("connect_timeout", Backend.connect_timeout)),
            read_timeout=_get_seconds(w, "backend.read_timeout",
                                      table.get("read_timeout", Backend.read_timeout)))
    raise w.bad("backend.type", '"wsgi" or "proxy"', kind, 'write type = "proxy" or type = "wsgi"')


def _db_url(w: _Where, key: str, value: Any) -> str:
    url = _get_str(w, key, value, 'write a URL such as "mysql+tenantkit://user:pw@host/db"')
    if not is_database_url(url):
        raise w.bad(key, "a database URL", url, 'such as "mysql+tenantkit://user:pw@host/db"')
    return url


def _database(w: _Where, doc: Mapping[str, Any]) -> SiteDatabase:
    table = _table(w, doc, "database", ("on_primary_down", "primaries", "primary", "replicas",
                                        "table_prefix"))
    primary = _db_url(w, "database.primary", table["primary"]) if "primary" in table else None
    primaries = _get_str_list(w, "database.primaries", table.get("primaries", []),
                              "mysql://...")
    for candidate in primaries:
        _db_url(w, "database.primaries", candidate)
    if primary is not None and primaries:
        raise w.bad("database.primary", "either primary or primaries", "both",
                    "list every candidate in primaries and remove primary")
    on_down = table.get("on_primary_down")
    if on_down not in (None, "error", "read_only"):
        raise w.bad("database.on_primary_down", '"error" or "read_only"', on_down,
                    'write on_primary_down = "read_only"')
    replicas = _get_str_list(w, "database.replicas", table.get("replicas", []), "mysql://...")
    for replica in replicas:
        _db_url(w, "database.replicas", replica)
    prefix = _get_str(w, "database.table_prefix", table.get("table_prefix", ""),
                      'write table_prefix = "wp_"')
    if not _PREFIX_RE.fullmatch(prefix):
        raise w.bad("database.table_prefix", "letters, digits and '_'", prefix,
                    'write table_prefix = "wp_"')
    return SiteDatabase(primary=primary, replicas=replicas, table_prefix=prefix,
                        primaries=tuple(primaries), on_primary_down=on_down)


def _cache(w: _Where, doc: Mapping[str, Any], settings: Settings) -> SiteCache:
    table = _table(w, doc, "cache", ("bypass_cookies", "enabled", "ignore_query_args",
                                     "max_bytes", "policy", "rewarm", "stale_if_error",
                                     "stale_seconds", "ttl"))
    d = settings.cache
    enabled = table.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise w.bad("cache.enabled", "true or false", enabled, "write true or false, no quotes")
    policy = table.get("policy", d.policy)
    if policy not in ("site", "targeted"):
        raise w.bad("cache.policy", '"site" or "targeted"', policy, 'write policy = "site"')
    max_bytes = table.get("max_bytes", d.max_bytes)
    rewarm = table.get("rewarm", d.rewarm)
    if not isinstance(rewarm, bool):
        raise w.bad("cache.rewarm", "true or false", rewarm, "write true or false, no quotes")
    return SiteCache(
        enabled=enabled,
        ttl=_get_int(w, "cache.ttl", table.get("ttl", d.ttl), 0, MAX_SECONDS),
        stale_seconds=_get_int(w, "cache.stale_seconds",
                               table.get("stale_seconds", d.stale_seconds), 0, MAX_SECONDS),
        stale_if_error=_get_int(w, "cache.stale_if_error",
                                table.get("stale_if_error", d.stale_if_error), 0,
                                MAX_SECONDS),
        rewarm=rewarm,
        max_bytes=None if max_bytes is None else _get_int(w, "cache.max_bytes", max_bytes, 1),
        policy=cast(Literal["site", "targeted"], policy),
        bypass_cookies=_get_str_list(w, "cache.bypass_cookies",
                                     table.get("bypass_cookies", list(d.bypass_cookies)),
                                     "wordpress_logged_in_"),
        ignore_query_args=_get_str_list(
            w, "cache.ignore_query_args",
            table.get("ignore_query_args", list(d.ignore_query_args)), "utm_*"),
    )


_TOP = ("backend", "cache", "database", "hosts", "meta", "name")


def site_from_document(doc: Mapping[str, Any], name: str, settings: Settings,
                       path: Path | None = None) -> Site:
    """Validate a parsed site document (the TOML as a dict) into a :class:`Site`."""
    w = _Where(path if path is not None else Path(f"{name}.toml"))
    for key in doc:
        if key not in _TOP:
            raise w.unknown(key, _TOP)
    if "name" in doc and doc["name"] != name:
        raise w.bad("name", f'the file name\'s stem "{name}"', doc["name"],
                    "remove the key, or rename the file")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise w.bad("meta", "a table", meta, "write [meta] on a line of its own")
    return Site(
        name=name,
        hosts=_hosts(w, doc),
        backend=_backend(w, doc),
        database=_database(w, doc),
        cache=_cache(w, doc, settings),
        meta=meta,
        cache_root=layout.site_root(settings.cache_dir, name),
        path=path,
    )


def load_site(path: Path | str, settings: Settings) -> Site:
    """Read and validate ``sites_dir/<name>.toml``; raise :class:`SiteFileError` if unusable."""
    path = Path(path)
    return site_from_document(_read_document(path), path.stem, settings, path)


def site_file_problems(path: Path | str, settings: Settings) -> list[str]:
    """Every problem of one site file, one message each (:func:`load_site` stops at the
    first); an empty list when it loads."""
    path = Path(path)
    try:
        doc = _read_document(path)
    except SiteFileError as exc:
        return [str(exc)]
    w = _Where(path)
    problems: list[str] = []

    def attempt(check: Callable[[], object]) -> None:
        try:
            check()
        except SiteFileError as exc:
            problems.append(str(exc))

    problems += [str(w.unknown(key, _TOP)) for key in doc if key not in _TOP]
    if "name" in doc and doc["name"] != path.stem:
        problems.append(str(w.bad("name", f'the file name\'s stem "{path.stem}"', doc["name"],
                                  "remove the key, or rename the file")))
    if not isinstance(doc.get("meta", {}), dict):
        problems.append(str(w.bad("meta", "a table", doc["meta"],
                                  "write [meta] on a line of its own")))
    for check in (_hosts, _backend, _database):
        attempt(lambda check=check: check(w, doc))  # type: ignore[misc]
    attempt(lambda: _cache(w, doc, settings))
    if not problems:
        attempt(lambda: site_from_document(doc, path.stem, settings, path))
    return problems


def _read_document(path: Path) -> dict[str, Any]:
    w = _Where(path)
    if path.suffix != ".toml":
        raise w.error("a site file's name must end in .toml (rename it to <site>.toml)")
    try:
        validate_name(path.stem)
    except InvalidSiteName as exc:
        raise w.error(f"{exc}; rename the file to <site>.toml") from None
    try:
        raw = read_regular_file(path, MAX_SITE_FILE_BYTES + 1)
    except FileNotFoundError:
        raise w.error("not found (it was removed, or never existed)") from None
    except IsADirectoryError:
        raise w.error("is a directory, not a file (remove it)") from None
    except NotARegularFile as exc:
        raise w.error(f"is {exc}, not a regular file (remove it; a site file is a "
                      "few lines of TOML)") from None
    except OSError as exc:
        raise w.error(f"cannot be read: {exc.strerror} (check its permissions)") from None
    if len(raw) > MAX_SITE_FILE_BYTES:
        raise w.error(f"larger than {MAX_SITE_FILE_BYTES} bytes; a site file is a few lines "
                      "(is this the right file?)")
    if not raw.strip():
        raise w.error('empty (write at least hosts = ["..."] and a [backend] table)')
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise w.error("not UTF-8 text (is it a binary file? save it as UTF-8 TOML)") from None
    if "\0" in text:
        raise w.error("contains NUL bytes (is it a binary file? save it as UTF-8 TOML)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise w.error(f"invalid TOML: {exc} (fix the syntax)") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise w.error("invalid TOML: nested too deeply (a site file needs no more than a "
                      "few levels; fix the file)") from None
    return doc


def site_document(site: Site, settings: Settings) -> dict[str, Any]:
    """The TOML document (a dict for ``tomli_w``) that :func:`load_site` reads back as *site*.

    Cache keys equal to the global defaults are left out, so that they follow the settings.
    """
    doc: dict[str, Any] = {"hosts": list(site.hosts)}
    backend: dict[str, Any] = {"type": site.backend.type}
    if site.backend.app is not None:
        backend["app"] = site.backend.app
    if site.backend.url is not None:
        backend["url"] = site.backend.url
    for key in ("max_concurrency", "connect_timeout", "read_timeout"):
        value = getattr(site.backend, key)
        if value != getattr(Backend, key):
            backend[key] = value
    doc["backend"] = backend
    db: dict[str, Any] = {}
    if site.database.primaries:
        db["primaries"] = list(site.database.primaries)
    elif site.database.primary is not None:
        db["primary"] = site.database.primary
    if site.database.on_primary_down is not None:
        db["on_primary_down"] = site.database.on_primary_down
    if site.database.replicas:
        db["replicas"] = list(site.database.replicas)
    if site.database.table_prefix:
        db["table_prefix"] = site.database.table_prefix
    if db:
        doc["database"] = db
    cache: dict[str, Any] = {}
    defaults = settings.cache
    for key in ("enabled", "ttl", "stale_seconds", "stale_if_error", "rewarm", "max_bytes",
                "policy", "bypass_cookies", "ignore_query_args"):
        value = getattr(site.cache, key)
        if value != getattr(defaults, key) and value is not None:
            cache[key] = list(value) if isinstance(value, tuple) else value
    if cache:
        doc["cache"] = cache
    if site.meta:
        doc["meta"] = dict(site.meta)
    return doc


def parse_backend_spec(spec: str) -> Backend:
    """``wsgi:module:attr`` or an ``http(s)://`` URL -> :class:`Backend`; ValueError if neither."""
    if spec.startswith("wsgi:") and _APP_RE.fullmatch(spec[5:]):
        return Backend(type="wsgi", app=spec[5:])
    if is_http_url(spec):
        return Backend(type="proxy", url=spec)
    raise ValueError(
        f"invalid backend {mask_url(spec)!r}: write wsgi:module:attr (a WSGI app or factory) "
        "or an upstream URL such as http://127.0.0.1:8080"
    )
