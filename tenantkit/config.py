"""Settings: ``tenantkit.toml`` plus ``TENANTKIT_*`` environment overrides.

With no file and no environment, the embedded defaults serve: sites in ``./sites``,
caches in ``./cache``, one SQLite database ``./tenantkit.db`` and the in-process bus::

    >>> settings = Settings.load()                 # ./tenantkit.toml if present
    >>> settings = Settings.load("/etc/tenantkit.toml")
    >>> settings.database.primary
    'sqlite:///./tenantkit.db'

A file looks like this (every key optional)::

    sites_dir = "/srv/tenantkit/sites"      # relative paths are relative to this file
    cache_dir = "/srv/tenantkit/cache"
    log_level = "INFO"

    [database]
    primary = "mysql+tenantkit://app:secret@db1.internal/app?compress=true"
    replicas = ["mysql+pymysql://app:secret@127.0.0.1/app"]
    read_your_writes = "gtid"               # gtid | pin | off
    # primaries = ["mysql+tenantkit://...@db1/app", "mysql+tenantkit://...@db2/app"]
    #                                       # failover candidates instead of one primary
    # on_primary_down = "error"             # error | read_only (serve stale pages)

    [cache]
    ttl = 300
    policy = "site"                          # site | targeted
    group = "www-data"                       # the group nginx reads the cache trees with

    [bus]
    transport = "redis"                      # local | redis | files
    redis_url = "redis://127.0.0.1:6379/0"

    [web]
    admin_hosts = ["admin.example.org"]
    admin_token = "change-me"

    [log]
    format = "text"                          # text | json
    access = true                            # one access-log line per request

Every environment variable ``TENANTKIT_<KEY>`` or ``TENANTKIT_<SECTION>_<KEY>``
overrides the file (``TENANTKIT_DATABASE_PRIMARY``, ``TENANTKIT_BUS_TRANSPORT``,
``TENANTKIT_CACHE_TTL``); lists are comma-separated. A bad value raises
:class:`~tenantkit.errors.ConfigError` naming the file or variable, the key and
what is allowed. URLs are held as :class:`~tenantkit.secret.SecretURL`: their passwords never show.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tenantkit.errors import ConfigError
from tenantkit.files import NotARegularFile, read_regular_file
from tenantkit.secret import MASK, SecretURL, mask_url
from tenantkit.validate import MAX_NUMBER, is_database_url, is_number, is_site_name

__all__ = [
    "DEFAULT_BYPASS_COOKIES",
    "DEFAULT_IGNORED_QUERY_ARGS",
    "RYW_COOKIE",
    "BusSettings",
    "CacheSettings",
    "DatabaseSettings",
    "LogSettings",
    "Settings",
    "WebSettings",
    "did_you_mean",
    "mask_url",
    "settings_env_vars",
    "settings_problems",
]

CONFIG_ENV = "TENANTKIT_CONFIG"
#: A settings file larger than this is refused (it is a few dozen lines).
MAX_SETTINGS_FILE_BYTES = 1024 * 1024
DEFAULT_CONFIG_FILE = "tenantkit.toml"

#: Name of the shim's signed read-your-writes cookie (see :mod:`tenantkit.web.rwcookie`).
RYW_COOKIE = "tenantkit_rw"

#: Cookie name prefixes that mean "this visitor sees a personal page" for WordPress and PunBB.
DEFAULT_BYPASS_COOKIES: tuple[str, ...] = (
    "wordpress_logged_in_",
    "comment_author_",
    "wp-postpass_",
    "forum_cookie_",
    "punbb_cookie",
    "tenantkit_wp_pin",
)
#: Marketing query arguments that never change a page: left out of the page-cache key and
#: still forwarded (``[cache] ignore_query_args``; a trailing ``*`` matches a prefix).
DEFAULT_IGNORED_QUERY_ARGS: tuple[str, ...] = (
    "utm_*", "fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid",
)

def keep_urls_secret(obj: object) -> None:
    """Turn the fields marked ``metadata={"url": True}`` of the frozen dataclass *obj* (a
    URL, or a tuple of them) into :class:`~tenantkit.secret.SecretURL` (call it from
    ``__post_init__``), so they are masked wherever they are shown."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not f.metadata.get("url") or value is None:
            continue
        if isinstance(value, tuple):
            value = tuple(SecretURL(v) if isinstance(v, str) else v for v in value)
        elif isinstance(value, str):
            value = SecretURL(value)
        object.__setattr__(obj, f.name, value)


def _masked_repr(obj: object) -> str:
    parts = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        shown = repr(MASK if value else value) if f.metadata.get("secret") else repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, kw_only=True, repr=False)
class DatabaseSettings:
    """Where the data lives. ``primary`` takes writes; ``replicas`` serve reads.

    ``primaries`` lists primary candidates instead of one ``primary`` (a failover setup):
    writes go to the one candidate with ``@@read_only = 0`` (see
    :mod:`tenantkit.db.primaries`); when it is set, ``primary`` is its first entry.
    ``on_primary_down`` says what a site does while no candidate takes writes: ``"error"``
    (writes fail with PrimaryUnavailable) or ``"read_only"`` (the same, and the page cache
    serves stale pages for the length of the outage).
    """

    primary: str = field(default="sqlite:///./tenantkit.db", metadata={"url": True})
    replicas: tuple[str, ...] = field(default=(), metadata={"url": True})
    primaries: tuple[str, ...] = field(default=(), metadata={"url": True})
    on_primary_down: Literal["error", "read_only"] = "error"
    read_your_writes: Literal["gtid", "pin", "off"] = "gtid"
    pin_seconds: float = 5.0
    gtid_wait_timeout: float = 1.0
    lag_threshold: float = 5.0
    connect_timeout: float = 2.0
    read_timeout: float = 30.0  # a primary that stops answering: the request gives up
    replica_read_timeout: float = 10.0  # a hung replica: the read goes elsewhere sooner
    write_timeout: float = 30.0
    dead_host_cooldown: float = 10.0

    __repr__ = _masked_repr
    def __post_init__(self) -> None:
        if self.primaries:
            object.__setattr__(self, "primary", self.primaries[0])
        keep_urls_secret(self)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The primary candidates: ``primaries``, else the one ``primary``."""
        return self.primaries or (self.primary,)


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """A page-cache policy: the global defaults (``[cache]`` in the settings), and each
    site's (``Site.cache``, also known as :class:`tenantkit.sites.SiteCache`: the defaults
    with its file's ``[cache]`` table applied)."""

    enabled: bool = True
    ttl: int = 300
    stale_seconds: int = 30
    max_bytes: int | None = None
    policy: Literal["site", "targeted"] = "site"
    bypass_cookies: tuple[str, ...] = DEFAULT_BYPASS_COOKIES
    #: Query arguments left out of the page-cache key, still forwarded (``utm_*``: prefix).
    ignore_query_args: tuple[str, ...] = DEFAULT_IGNORED_QUERY_ARGS
    #: The group nginx reads the cache trees with (global only): ``provision`` gives each
    #: site's cache directories that group and mode 2750 (setgid: everything below inherits
    #: the group), and the page cache then writes its files 0640.
    group: str | None = None
    #: Seconds after it was purged or expired that a page is still served (``STALE``) when
    #: the backend fails (5xx, timeout, refused): see :mod:`tenantkit.cache.staleness`.
    stale_if_error: int = 300
    #: After a targeted purge, fetch the purged URLs again in the background
    #: (:mod:`tenantkit.web.rewarm`).
    rewarm: bool = False


@dataclass(frozen=True, kw_only=True, repr=False)
class BusSettings:
    """How invalidation events travel between web nodes."""

    transport: Literal["local", "redis", "files"] = "local"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"url": True})
    stream: str = "tenantkit:events"
    stream_maxlen: int = 10000
    node: str = ""
    replica_wait_timeout: float = 2.0
    #: Purges of one site asked for within this many seconds are carried out as one
    #: (:mod:`tenantkit.cache.coalesce`); 0 merges nothing.
    coalesce_window: float = 0.25

    __repr__ = _masked_repr
    def __post_init__(self) -> None:
        keep_urls_secret(self)


@dataclass(frozen=True, kw_only=True, repr=False)
class WebSettings:
    """The WSGI shim: proxies, unknown hosts, the admin endpoints."""

    trusted_proxies: int = 0
    unknown: str = "421"
    admin_hosts: tuple[str, ...] = ()
    admin_token: str = field(default="", metadata={"secret": True})
    secret_key: str = field(default="", metadata={"secret": True})

    __repr__ = _masked_repr


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """What tenantkit logs and how (see :mod:`tenantkit.logs`); the level is the top-level
    ``log_level``."""

    format: Literal["text", "json"] = "text"
    access: bool = True


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All of tenantkit's settings; frozen, compared by value, secrets masked in ``repr``.

    Build one with :meth:`load` (file + environment) or directly for tests::

        Settings(sites_dir=tmp / "sites", cache_dir=tmp / "cache")
    """

    sites_dir: Path = Path("sites")
    cache_dir: Path = Path("cache")
    log_level: str = "INFO"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    web: WebSettings = field(default_factory=WebSettings)
    log: LogSettings = field(default_factory=LogSettings)
    source: str | None = field(default=None, compare=False)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Load settings from *path* (else ``$TENANTKIT_CONFIG``, else ``./tenantkit.toml``
        when it exists, else nothing) and apply ``TENANTKIT_*`` overrides from *env*
        (default: ``os.environ``)."""
        env = os.environ if env is None else env
        if path is None and env.get(CONFIG_ENV):
            path = env[CONFIG_ENV]
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        data: dict[str, Any] = {}
        base = Path(".")
        source = None
        if path is not None:
            file = Path(path)
            source = str(file)
            data = _read_toml(file)
            base = file.parent
        return _build(data, env, source or "defaults", base, source)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        raw = read_regular_file(file, MAX_SETTINGS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"settings file {file}: not found (create it, or unset {CONFIG_ENV} / --config "
            "to run on the embedded defaults)"
        ) from None
    except NotARegularFile as exc:
        raise ConfigError(f"settings file {file}: is {exc}, not a regular file (point "
                          f"{CONFIG_ENV} / --config at a TOML file)") from None
    except OSError as exc:
        raise ConfigError(
            f"settings file {file}: cannot be read: {exc.strerror} (check its permissions)"
        ) from exc
    if len(raw) > MAX_SETTINGS_FILE_BYTES:
        raise ConfigError(f"settings file {file}: larger than {MAX_SETTINGS_FILE_BYTES} "
                          "bytes (is this the right file?)")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"settings file {file}: not UTF-8 text (save it as UTF-8 TOML)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {file}: invalid TOML: {exc} (fix the syntax)") from exc
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"settings file {file}: invalid TOML: nested too deeply (a settings "
                          "file needs no more than a few levels; fix the file)") from None


# --- coercion -----------------------------------------------------------------------------

Coerce = Callable[[str, str, Any, bool], Any]


def _fail(where: str, key: str, expected: str, got: Any, fix: str) -> ConfigError:
    return ConfigError(f'{where}: key "{key}": expected {expected}, got {got!r} ({fix})')


def _str(where: str, key: str, value: Any, from_env: bool) -> str:
    if not isinstance(value, str):
        raise _fail(where, key, "a string", value, f'write {key.rsplit(".", 1)[-1]} = "..."')
    return value


def _path(where: str, key: str, value: Any, from_env: bool) -> Path:
    text = _str(where, key, value, from_env)
    if not text or "\0" in text:
        raise _fail(where, key, "a directory path", value, "give a non-empty path")
    return Path(text)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _number(kind: type[int] | type[float], minimum: float,
            maximum: float = MAX_NUMBER) -> Coerce:
    name = "an integer" if kind is int else "a number"

    def coerce(where: str, key: str, value: Any, from_env: bool) -> int | float:
        if from_env and isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                raise _fail(where, key, name, value, f"set it to {name}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, key, name, value, f"write {key.rsplit('.', 1)[-1]} = 5")
        if kind is int and not isinstance(value, int):
            raise _fail(where, key, name, value, "use a whole number")
        if not is_number(value, minimum=minimum, maximum=maximum):
            raise _fail(where, key, f"{name} from {minimum:g} to {_plain(maximum)}", value,
                        "use a finite value in that range")
        return kind(value)

    return coerce


def _optional_int(where: str, key: str, value: Any, from_env: bool) -> int | None:
    if value is None or (from_env and isinstance(value, str) and value.strip() in ("", "none")):
        return None
    result: int = _number(int, 1)(where, key, value, from_env)
    return result


def _group(where: str, key: str, value: Any, from_env: bool) -> str | None:
    text = _str(where, key, value, from_env).strip()
    if not text:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
        raise _fail(where, key, "a group name or gid", value, 'write group = "www-data"')
    return text


def _bool(where: str, key: str, value: Any, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _fail(where, key, "true or false", value, "use 1/0, true/false, yes/no or on/off")
    if not isinstance(value, bool):
        raise _fail(where, key, "true or false", value, "write true or false, without quotes")
    return value


def _str_list(where: str, key: str, value: Any, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        name = key.rsplit(".", 1)[-1]
        raise _fail(where, key, "a list of strings", value, f'write {name} = ["...", "..."]')
    return tuple(value)


def _choice(*allowed: str) -> Coerce:
    def coerce(where: str, key: str, value: Any, from_env: bool) -> str:
        if value not in allowed:
            choices = " or ".join(f'"{a}"' for a in allowed)
            raise _fail(where, key, f"one of {choices}", value, f"use {choices}")
        return str(value)

    return coerce


def _db_url(where: str, key: str, value: Any, from_env: bool) -> str:
    text = _str(where, key, value, from_env)
    if not is_database_url(text):
        raise ConfigError(
            f'{where}: key "{key}": expected a database URL such as '
            f'"mysql+tenantkit://user:password@host/db" or "sqlite:///./tenantkit.db", '
            f"got {mask_url(text, whole=True)!r}"
        )
    return text


def _db_url_list(where: str, key: str, value: Any, from_env: bool) -> tuple[str, ...]:
    items = _str_list(where, key, value, from_env)
    return tuple(_db_url(where, key, item, from_env) for item in items)


def _redis_url(where: str, key: str, value: Any, from_env: bool) -> str:
    text = _str(where, key, value, from_env)
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f'{where}: key "{key}": expected a Redis URL such as "redis://127.0.0.1:6379/0", '
            f"got {mask_url(text, whole=True)!r}"
        )
    return text


def _log_level(where: str, key: str, value: Any, from_env: bool) -> str:
    text = _str(where, key, value, from_env).upper()
    return str(_choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")(where, key, text, from_env))


def _unknown(where: str, key: str, value: Any, from_env: bool) -> str:
    text = _str(where, key, value, from_env)
    if text != "421" and not is_site_name(text):
        raise _fail(where, key, '"421" or a site name', value, 'write unknown = "421"')
    return text


#: The longest ``[bus] coalesce_window``: a purge waits that long before it is carried out.
MAX_COALESCE_WINDOW = 5.0

_TOP: dict[str, Coerce] = {"sites_dir": _path, "cache_dir": _path, "log_level": _log_level}
_SECTIONS: dict[str, tuple[type[Any], dict[str, Coerce]]] = {
    "database": (
        DatabaseSettings,
        {
            "primary": _db_url,
            "replicas": _db_url_list,
            "primaries": _db_url_list,
            "on_primary_down": _choice("error", "read_only"),
            "read_your_writes": _choice("gtid", "pin", "off"),
            "pin_seconds": _number(float, 0),
            "gtid_wait_timeout": _number(float, 0),
            "lag_threshold": _number(float, 0),
            "connect_timeout": _number(float, 0.001),
            "read_timeout": _number(float, 0.001),
            "replica_read_timeout": _number(float, 0.001),
            "write_timeout": _number(float, 0.001),
            "dead_host_cooldown": _number(float, 0),
        },
    ),
    "cache": (
        CacheSettings,
        {
            "enabled": _bool,
            "ttl": _number(int, 0),
            "stale_seconds": _number(int, 0),
            "stale_if_error": _number(int, 0),
            "rewarm": _bool,
            "max_bytes": _optional_int,
            "policy": _choice("site", "targeted"),
            "bypass_cookies": _str_list,
            "ignore_query_args": _str_list,
            "group": _group,
        },
    ),
    "bus": (
        BusSettings,
        {
            "transport": _choice("local", "redis", "files"),
            "redis_url": _redis_url,
            "stream": _str,
            "stream_maxlen": _number(int, 1),
            "node": _str,
            "replica_wait_timeout": _number(float, 0),
            "coalesce_window": _number(float, 0, MAX_COALESCE_WINDOW),
        },
    ),
    "web": (
        WebSettings,
        {
            "trusted_proxies": _number(int, 0),
            "unknown": _unknown,
            "admin_hosts": _str_list,
            "admin_token": _str,
            "secret_key": _str,
        },
    ),
    "log": (LogSettings, {"format": _choice("text", "json"), "access": _bool}),
}


def _allowed(keys: Mapping[str, Any]) -> str:
    return ", ".join(sorted(keys))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``' (did you mean "ttl"?)'`` when *word* looks like a misspelling of one of *choices*,
    else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Problems:
    """Raise the first ConfigError (``collect=None``), or keep every one of them."""

    def __init__(self, collect: list[str] | None) -> None:
        self.collect = collect

    def __call__(self, error: ConfigError) -> None:
        if self.collect is None:
            raise error
        self.collect.append(str(error))


def _build(
    data: dict[str, Any], env: Mapping[str, str], where: str, base: Path, source: str | None,
    collect: list[str] | None = None,
) -> Settings:
    problem = _Problems(collect)
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in data.items():
        try:
            if key in _TOP:
                top[key] = _TOP[key](where, key, value, False)
                if isinstance(top[key], Path) and not top[key].is_absolute():
                    top[key] = base / top[key]
            elif key in _SECTIONS:
                if not isinstance(value, dict):
                    raise _fail(where, key, "a table", value, f"write [{key}] on a line of its own")
                schema = _SECTIONS[key][1]
                for sub, subvalue in value.items():
                    try:
                        if sub not in schema:
                            raise ConfigError(
                                f'{where}: key "{key}.{sub}": unknown key'
                                f"{did_you_mean(sub, schema)} (allowed in [{key}]: "
                                f"{_allowed(schema)})"
                            )
                        sections[key][sub] = schema[sub](where, f"{key}.{sub}", subvalue, False)
                    except ConfigError as exc:
                        problem(exc)
            else:
                known = {**_TOP, **_SECTIONS}
                raise ConfigError(
                    f'{where}: key "{key}": unknown key{did_you_mean(key, known)} (allowed: '
                    f"{_allowed(known)})"
                )
        except ConfigError as exc:
            problem(exc)
    _apply_env(env, top, sections, problem)
    database = sections["database"]
    if "primary" in database and "primaries" in database:
        problem(ConfigError(
            f'{where}: keys "database.primary" and "database.primaries" are both set: '
            "list every candidate in primaries and remove primary"
        ))
        database.pop("primary")
    return Settings(
        **top,
        **{name: _SECTIONS[name][0](**values) for name, values in sections.items()},
        source=source,
    )


def settings_env_vars() -> list[str]:
    """Every ``TENANTKIT_*`` variable the settings read (the CLI's options add their own)."""
    names = [CONFIG_ENV, "TENANTKIT_REQUIRE_SERVICES"]
    names += [f"TENANTKIT_{key.upper()}" for key in _TOP]
    for section, (_, schema) in _SECTIONS.items():
        names += [f"TENANTKIT_{section.upper()}_{key.upper()}" for key in schema]
    return names


def settings_problems(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> list[str]:
    """Every problem of the settings :meth:`Settings.load` would read (it stops at the first);
    an empty list when they load."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        try:
            data = _read_toml(Path(path))
        except ConfigError as exc:
            return [str(exc)]
        base = Path(path).parent
    problems: list[str] = []
    try:
        _build(data, env, str(path) if path is not None else "defaults", base,
               str(path) if path is not None else None, problems)
    except (ConfigError, TypeError) as exc:  # pragma: no cover - every problem is collected
        problems.append(str(exc))
    return problems


def _apply_env(
    env: Mapping[str, str], top: dict[str, Any], sections: dict[str, dict[str, Any]],
    problem: Callable[[ConfigError], None] | None = None,
) -> None:
    problem = problem or _Problems(None)
    known = {"TENANTKIT_CONFIG", "TENANTKIT_REQUIRE_SERVICES"}
    for var, value in env.items():
        if not var.startswith("TENANTKIT_") or var in known:
            continue
        name = var[len("TENANTKIT_") :].lower()
        where = f"environment variable {var}"
        try:
            if name in _TOP:
                top[name] = _TOP[name](where, name, value, True)
                continue
            for section, (_, schema) in _SECTIONS.items():
                prefix = section + "_"
                if name.startswith(prefix) and name[len(prefix) :] in schema:
                    key = name[len(prefix) :]
                    sections[section][key] = schema[key](where, f"{section}.{key}", value, True)
                    break
        except ConfigError as exc:
            problem(exc)
        # Other TENANTKIT_* variables belong to the CLI (click's auto_envvar_prefix): not ours.
