"""Provisioning: create or update a site's cache tree and site file; remove them again.

::

    result = provision(settings, "blog", ["blog.example.org", "*.blog.example.org"],
                       backend="http://127.0.0.1:8080")
    print("\\n".join(result.changes) or "nothing changed")
    deprovision(settings, "blog")

:func:`provision` validates everything first (name, hosts, backend, conflicts with other
sites' patterns), then creates ``cache_dir/<site>/`` with ``pages/``, ``app/``, ``tmp/`` and
``.purge/`` (mode 0750, owner applied when asked; with a group -- *group*, else
``[cache] group`` -- that group and mode 2750: setgid, so every directory and page file the
page cache makes below inherits the group nginx reads with), and writes the site file last,
atomically (a temporary file in ``sites_dir``, then ``os.replace``), so a running watcher never
sees a site without its cache. A second identical run changes nothing and says so; options left
out keep the site's current values. A lock file (``sites_dir/.<site>.lock``) serialises
concurrent runs for the same site, and ``sites_dir/._hosts.lock`` the host claims of all
sites (from the conflict check to the site file's write: two runs for different sites that
claim the same host cannot both succeed). On any error, directories created by the run are removed
again: nothing is left half-created.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import stat
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from tenantkit import layout
from tenantkit.config import Settings, mask_url
from tenantkit.errors import ProvisionError, SiteFileError
from tenantkit.files import fsync_dir, write_atomic
from tenantkit.hosts import claim_owner, host_claims, normalize_patterns, pattern_key
from tenantkit.registry import Registry
from tenantkit.sites import (
    Backend,
    Site,
    SiteCache,
    SiteDatabase,
    load_site,
    parse_backend_spec,
    site_document,
    site_from_document,
    validate_name,
)

__all__ = [
    "CACHE_DIR_MODE",
    "GROUP_CACHE_DIR_MODE",
    "DeprovisionResult",
    "ProvisionResult",
    "ProvisionUsageError",
    "deprovision",
    "provision",
]

CACHE_DIR_MODE = 0o750
#: With a group: readable by it, setgid (what is made below inherits the group).
GROUP_CACHE_DIR_MODE = 0o2750
SITE_FILE_MODE = 0o640  # site files may hold database passwords


class ProvisionUsageError(ProvisionError, ValueError):
    """The arguments are wrong (missing hosts or backend, unknown owner, ...): fix the call."""


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision` did (or, with ``dry_run``, would do)."""

    site: Site
    path: Path
    created: bool
    changes: tuple[str, ...]
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def summary(self) -> str:
        if not self.changes:
            return f"site {self.site.name}: already provisioned as asked; nothing changed"
        verb = "would change" if self.dry_run else ("created" if self.created else "changed")
        return f"site {self.site.name}: {verb}:\n" + "\n".join(f"  {c}" for c in self.changes)


@dataclass(frozen=True)
class DeprovisionResult:
    """What :func:`deprovision` removed."""

    name: str
    removed_file: bool
    removed_cache: bool
    changes: tuple[str, ...]

    def summary(self) -> str:
        if not self.changes:
            return f"site {self.name}: not provisioned; nothing to remove"
        return f"site {self.name}: removed:\n" + "\n".join(f"  {c}" for c in self.changes)


# --- locking ------------------------------------------------------------------------------


_CLAIMS = "_hosts"  # the host claims' lock, ._hosts.lock ("_" is in no site name)


@contextlib.contextmanager
def _site_lock(settings: Settings, name: str, timeout: float) -> Iterator[None]:
    path = settings.sites_dir / f".{name}.lock"
    what = "host claims" if name == _CLAIMS else f"site {name}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProvisionError(
            f"cannot create the lock file {path}: {exc.strerror} (check that {settings.sites_dir} "
            "is a writable directory)"
        ) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProvisionError(
                        f"{what}: another provision or deprovision is running (lock {path} "
                        f"held for more than {timeout:g} s); try again when it has finished"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race)


# --- validation ---------------------------------------------------------------------------


def _patterns(hosts: Iterable[str]) -> tuple[str, ...]:
    if isinstance(hosts, str):
        raise ProvisionUsageError(f"hosts must be a list of host names, got {hosts!r}")
    return normalize_patterns(hosts)  # InvalidHost is a ValueError: a usage error


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    uid = gid = -1
    if owner is not None:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ProvisionUsageError(f"unknown user {owner!r} (give an existing user name or "
                                      "uid)") from None
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ProvisionUsageError(f"unknown group {group!r} (give an existing group name or "
                                      "gid)") from None
    return uid, gid


def _existing(settings: Settings, path: Path) -> Site | None:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisionError(f"site file {path}: cannot be read: {exc.strerror}") from exc
    try:
        return load_site(path, settings)
    except SiteFileError as exc:
        raise ProvisionError(
            f"{exc}; the existing site file is broken: fix it, or run "
            f"`tenantkit deprovision {path.stem}` first"
        ) from None


def _conflicts(settings: Settings, site: Site) -> list[str]:
    others = Registry.load(settings, log_errors=False).sites
    claims = host_claims({n: s.hosts for n, s in others.items() if n != site.name})
    found = []
    for p in site.hosts:
        owners = claims.get(pattern_key(p))
        if owners:
            owner = claim_owner(owners)
            found.append(f"host pattern {p!r} is already claimed by site {owner!r}")
    return found


def _value(value: Any) -> str:
    """A setting's value as an operator writes it: strings bare, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _describe(site: Site) -> dict[str, str]:
    """The site's settings as the summary prints them (values, URLs masked)."""
    b = site.backend
    db = site.database
    parts = [f"primary={mask_url(db.primary)}"] if db.primary else []
    if db.replicas:
        parts.append("replicas=" + _value([mask_url(r) for r in db.replicas]))
    if db.table_prefix:
        parts.append(f"table_prefix={db.table_prefix}")
    database = ", ".join(parts) or "the global [database]"
    cache = site.cache
    return {
        "hosts": ", ".join(site.hosts),
        "backend": f"wsgi:{b.app}" if b.type == "wsgi" else mask_url(b.url or ""),
        "database": database,
        "cache": ", ".join(f"{f.name}={_value(getattr(cache, f.name))}"
                           for f in fields(cache) if f.name != "group"),
        "meta": ", ".join(f"{k}={_value(v)}" for k, v in sorted(site.meta.items())) or "none",
    }


# --- provision ----------------------------------------------------------------------------


def provision(
    settings: Settings,
    name: str,
    hosts: Iterable[str] | None = None,
    *,
    backend: Backend | str | None = None,
    database: SiteDatabase | None = None,
    cache: SiteCache | None = None,
    meta: Mapping[str, Any] | None = None,
    owner: str | None = None,
    group: str | None = None,
    dry_run: bool = False,
    lock_timeout: float = 10.0,
) -> ProvisionResult:
    """Create or update site *name*; see the module docstring.

    Options left as None keep the existing site's values (a new site needs *hosts* and
    *backend*). *backend* is a :class:`Backend`, ``"wsgi:module:attr"`` or an upstream URL.
    Raises a ``ValueError`` subclass (:class:`~tenantkit.errors.InvalidHost`,
    :class:`~tenantkit.sites.InvalidSiteName`, :class:`ProvisionUsageError`) for bad
    arguments, :class:`~tenantkit.errors.ProvisionError` when the work cannot be done.
    """
    validate_name(name)
    patterns = _patterns(hosts) if hosts is not None else None
    if patterns == ():
        raise ProvisionUsageError("give at least one host (--host blog.example.org)")
    if isinstance(backend, str):
        backend = parse_backend_spec(backend)
    uid, gid = _ids(owner, group if group is not None else settings.cache.group)
    path = settings.sites_dir / f"{name}.toml"

    if dry_run:
        return _plan_and_apply(settings, name, path, patterns, backend, database, cache, meta,
                               uid, gid, dry_run=True)
    try:
        settings.sites_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"cannot create the sites directory {settings.sites_dir}: {exc.strerror}"
        ) from exc
    with _site_lock(settings, name, lock_timeout), _site_lock(settings, _CLAIMS, lock_timeout):
        return _plan_and_apply(settings, name, path, patterns, backend, database, cache, meta,
                               uid, gid, dry_run=False)


def _plan_and_apply(
    settings: Settings, name: str, path: Path, patterns: tuple[str, ...] | None,
    backend: Backend | None, database: SiteDatabase | None, cache: SiteCache | None,
    meta: Mapping[str, Any] | None, uid: int, gid: int, *, dry_run: bool,
) -> ProvisionResult:
    existing = _existing(settings, path)
    if existing is None:
        if patterns is None:
            raise ProvisionUsageError(f"site {name} is new: give its hosts (--host ...)")
        if backend is None:
            raise ProvisionUsageError(
                f"site {name} is new: give its backend (--backend wsgi:module:attr or "
                "--upstream http://127.0.0.1:8080)"
            )
    base = existing or Site(
        name=name, hosts=(), backend=Backend(type="proxy", url="http://127.0.0.1"),
        cache=settings.cache,
        cache_root=layout.site_root(settings.cache_dir, name),
    )
    draft = replace(
        base,
        hosts=patterns if patterns is not None else base.hosts,
        backend=backend or base.backend,
        database=database or base.database,
        cache=cache or base.cache,
        meta=dict(meta) if meta is not None else base.meta,
    )
    # Validate the whole site exactly as the registry will read it back.
    document = site_document(draft, settings)
    try:
        desired = site_from_document(document, name, settings, path)
    except SiteFileError as exc:
        raise ProvisionUsageError(str(exc).replace(f"site file {path}: ", "", 1)) from None
    problems = _conflicts(settings, desired)
    if problems:
        raise ProvisionError(
            f"site {name}: " + "; ".join(problems)
            + " (remove the pattern from the other site first, or choose another host)"
        )

    changes: list[str] = []
    created_dirs: list[Path] = []
    try:
        _ensure_dirs(settings, desired, uid, gid, changes, created_dirs, dry_run)
        if existing != desired:
            if existing is None:
                changes.append(f"wrote site file {path}")
            else:
                before, after = _describe(existing), _describe(desired)
                changes += [f"{k}: {before[k]} -> {after[k]}" for k in before
                            if before[k] != after[k]]
                changes.append(f"rewrote site file {path}")
            if not dry_run:
                _atomic_write(path, tomli_w.dumps(document).encode("utf-8"))
    except BaseException:
        for d in reversed(created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return ProvisionResult(desired, path, existing is None, tuple(changes), dry_run)


def _ensure_dirs(settings: Settings, site: Site, uid: int, gid: int, changes: list[str],
                 created: list[Path], dry_run: bool) -> None:
    root = site.cache_root
    mode = GROUP_CACHE_DIR_MODE if gid != -1 else CACHE_DIR_MODE
    if not dry_run:
        try:
            settings.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProvisionError(
                f"cannot create the cache directory {settings.cache_dir}: {exc.strerror} "
                "(check cache_dir and its permissions)"
            ) from exc
    for d in (root, *(root / sub for sub in layout.SITE_SUBDIRS)):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            changes.append(f"created {d}/ (mode {mode:o})")
            if dry_run:
                continue
            try:
                os.mkdir(d, CACHE_DIR_MODE)
                created.append(d)
                if uid != -1 or gid != -1:
                    os.chown(d, uid, gid)  # before the chmod: chown clears setgid
                os.chmod(d, mode)  # the umask may have taken bits away
            except OSError as exc:
                raise ProvisionError(f"cannot create {d}: {exc.strerror} (check the "
                                     "permissions of its parent)") from exc
            continue
        except OSError as exc:
            raise ProvisionError(f"cannot inspect {d}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise ProvisionError(f"{d} exists and is not a directory (move it away)")
        if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
            changes.append(f"owner of {d}/: {st.st_uid}:{st.st_gid} -> "
                           f"{uid if uid != -1 else st.st_uid}:{gid if gid != -1 else st.st_gid}")
            if not dry_run:
                _apply(os.chown, d, uid, gid)
                st = os.lstat(d)  # chown clears setgid: compare the mode afterwards
        # Without a group asked for, a setgid tree (provisioned with one before) stays so.
        want = mode | (stat.S_IMODE(st.st_mode) & stat.S_ISGID if gid == -1 else 0)
        if stat.S_IMODE(st.st_mode) != want:
            changes.append(f"mode of {d}/: {stat.S_IMODE(st.st_mode):o} -> {want:o}")
            if not dry_run:
                _apply(os.chmod, d, want)


def _apply(fn: Any, path: Path, *args: int) -> None:
    try:
        fn(path, *args)
    except OSError as exc:
        raise ProvisionError(f"cannot change {path}: {exc.strerror}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data, mode=SITE_FILE_MODE, durable=True)
    except OSError as exc:
        raise ProvisionError(f"cannot write the site file {path}: {exc.strerror} (check that "
                             f"{path.parent} is writable)") from exc


# --- deprovision --------------------------------------------------------------------------


def deprovision(settings: Settings, name: str, *, keep_cache: bool = False,
                lock_timeout: float = 10.0) -> DeprovisionResult:
    """Remove site *name*: the site file first (the site stops being served), then, unless
    *keep_cache*, the cache tree (moved aside, then deleted). Idempotent."""
    validate_name(name)
    path = settings.sites_dir / f"{name}.toml"
    changes: list[str] = []
    removed_file = removed_cache = False
    if not settings.sites_dir.is_dir():
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        lock = _site_lock(settings, name, lock_timeout)
    with lock:
        try:
            os.unlink(path)
            removed_file = True
            changes.append(f"removed site file {path}")
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProvisionError(f"cannot remove the site file {path}: {exc.strerror}") from exc
        if not keep_cache:
            root = layout.site_root(settings.cache_dir, name)
            aside = layout.site_trash(settings.cache_dir, name, uuid.uuid4().hex[:8])
            try:
                os.rename(root, aside)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ProvisionError(
                    f"site file removed, but the cache tree {root} could not be moved aside: "
                    f"{exc.strerror} (remove it by hand)"
                ) from exc
            else:
                removed_cache = True
                changes.append(f"removed cache tree {root}/")
                try:
                    shutil.rmtree(aside)
                except OSError as exc:
                    raise ProvisionError(
                        f"cache tree {root} moved to {aside} but not deleted: {exc} "
                        "(remove it by hand)"
                    ) from exc
    return DeprovisionResult(name, removed_file, removed_cache, tuple(changes))

