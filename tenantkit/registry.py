"""Registry: the sites of ``sites_dir`` and their host index, as one immutable snapshot.

::

    registry = Registry.load(settings)          # or Registry.load("/srv/sites")
    site = registry.resolve("Blog.Example.org:443")
    site = registry.resolve_request(environ, trusted_proxies=1)
    report = registry.reload()                  # ReloadReport(added=(...), removed=(...), ...)
    registry.errors                             # {Path("sites/bad.toml"): "site file ...: ..."}

A reload parses the directory into a new snapshot (sites, index, errors) and swaps it in with
one assignment, so a reader never sees half of one. A file that fails keeps its site's last
good definition (or leaves it absent if it never had one); its error is kept in
:attr:`Registry.errors` and logged at ERROR once per change. Files whose size, inode and
modification time have not changed since the last reload are not parsed again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tenantkit.config import Settings
from tenantkit.errors import InvalidHost, SiteFileError
from tenantkit.hosts import Conflict, HostIndex, request_host
from tenantkit.sites import Site, load_site

__all__ = ["Registry", "ReloadReport", "Snapshot", "site_files"]

log = logging.getLogger(__name__)

# A file modified this recently may change again within the file system's timestamp
# granularity (up to a jiffy, or a second on some file systems) without its stat changing:
# such files are parsed again on every reload rather than trusted by their stat.
_RACY_SECONDS = 2.0

_StatKey = tuple[int, int, int, int]


@dataclass(frozen=True)
class ReloadReport:
    """What one :meth:`Registry.reload` changed; names are sorted, ``failed`` holds file names."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.failed)


@dataclass(frozen=True)
class _FileState:
    stat: _StatKey
    racy: bool
    site: Site | None
    error: str | None


@dataclass(frozen=True)
class Snapshot:
    """One consistent view: sites by name, their index, errors by file, host conflicts."""

    sites: Mapping[str, Site]
    index: HostIndex
    errors: Mapping[Path, str]
    conflicts: tuple[Conflict, ...]
    files: Mapping[Path, _FileState] = field(repr=False)


def site_files(sites_dir: Path) -> list[Path]:
    """The candidate site files of *sites_dir*: ``*.toml``, hidden and temporary files aside."""
    try:
        entries = list(os.scandir(sites_dir))
    except FileNotFoundError:
        return []
    return sorted(
        Path(e.path) for e in entries if e.name.endswith(".toml") and not e.name.startswith(".")
    )


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class Registry:
    """Sites by name and host; see the module docstring."""

    def __init__(self, settings: Settings, *, log_errors: bool = True) -> None:
        self.settings = settings
        self.log_errors = log_errors
        self._lock = threading.Lock()
        default = settings.web.unknown if settings.web.unknown != "421" else None
        self._default = default
        self._snapshot = Snapshot(
            MappingProxyType({}), HostIndex({}, default=default), MappingProxyType({}), (),
            MappingProxyType({}),
        )

    @classmethod
    def load(cls, settings_or_sites_dir: Settings | str | os.PathLike[str], *,
             log_errors: bool = True) -> Registry:
        """Load every site file. Accepts :class:`Settings`, or a sites directory (with the
        default settings otherwise). Broken files are reported in :attr:`errors` (and
        logged, unless *log_errors* is false because the caller reports them itself)."""
        if isinstance(settings_or_sites_dir, Settings):
            settings = settings_or_sites_dir
        else:
            settings = Settings(sites_dir=Path(settings_or_sites_dir))
        registry = cls(settings, log_errors=log_errors)
        registry.reload()
        return registry

    # --- reading (lock-free: one attribute read gives a consistent snapshot) --------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def sites(self) -> Mapping[str, Site]:
        return self._snapshot.sites

    @property
    def errors(self) -> Mapping[Path, str]:
        return self._snapshot.errors

    @property
    def conflicts(self) -> tuple[Conflict, ...]:
        return self._snapshot.conflicts

    @property
    def index(self) -> HostIndex:
        return self._snapshot.index

    def resolve(self, raw_host: str) -> Site | None:
        """The site for a Host header value (``settings.web.unknown`` when that names a site),
        else None. Never raises."""
        snap = self._snapshot
        name = snap.index.lookup(raw_host)
        return None if name is None else snap.sites.get(name)

    def owner(self, raw_host: str) -> str | None:
        """The name of the site that serves *raw_host* (:meth:`resolve`), else None: the one
        answer to "who owns this host" for everything that keeps per-host state."""
        site = self.resolve(raw_host)
        return None if site is None else site.name

    def resolve_request(self, environ: Mapping[str, object], trusted_proxies: int = 0
                        ) -> Site | None:
        """:meth:`resolve` for a WSGI environ; ``X-Forwarded-Host`` counts only when
        ``trusted_proxies > 0`` (the value that many hops from the right)."""
        return self.resolve(request_host(environ, trusted_proxies))

    # --- reloading ---------------------------------------------------------------------------

    def reload(self) -> ReloadReport:
        """Re-read ``sites_dir`` and swap in the new snapshot; returns what changed."""
        with self._lock:
            old = self._snapshot
            new, failed = self._build(old)
            self._snapshot = new
        report = ReloadReport(
            added=tuple(sorted(new.sites.keys() - old.sites.keys())),
            removed=tuple(sorted(old.sites.keys() - new.sites.keys())),
            changed=tuple(sorted(
                n for n in new.sites.keys() & old.sites.keys() if new.sites[n] != old.sites[n]
            )),
            failed=failed,
        )
        if report.added or report.removed or report.changed:
            log.info("sites reloaded: added %s, removed %s, changed %s",
                     list(report.added), list(report.removed), list(report.changed))
        return report

    def _build(self, old: Snapshot) -> tuple[Snapshot, tuple[str, ...]]:
        settings = self.settings
        now = time.time()
        files: dict[Path, _FileState] = {}
        for path in site_files(settings.sites_dir):
            try:
                st = path.stat()
            except OSError:
                continue  # removed while we were listing: it is gone
            key = _stat_key(st)
            previous = old.files.get(path)
            if previous is not None and previous.stat == key and not previous.racy:
                files[path] = previous
                continue
            racy = now - st.st_mtime < _RACY_SECONDS or now - st.st_ctime < _RACY_SECONDS
            try:
                site: Site | None = load_site(path, settings)
                error = None
            except SiteFileError as exc:
                site, error = None, str(exc)
            if previous is not None and site is not None and site == previous.site:
                site = previous.site  # same definition: keep the object (and the index)
            files[path] = _FileState(key, racy, site, error)

        sites: dict[str, Site] = {}
        errors: dict[Path, str] = {}
        failed: list[str] = []
        for path, state in files.items():
            if state.error is None:
                assert state.site is not None
                sites[state.site.name] = state.site
                if path in old.errors:
                    log.info("site file %s: fixed", path)
                continue
            errors[path] = state.error
            failed.append(path.name)
            if old.errors.get(path) != state.error and self.log_errors:
                log.error("%s", state.error)
            # The last good definition stays, when this file had one.
            last_good = old.sites.get(path.stem)
            if last_good is not None and last_good.path == path:
                sites[last_good.name] = last_good
                if path not in old.errors and self.log_errors:
                    log.error("site %s keeps its last good definition until %s is fixed",
                              last_good.name, path)

        if sites.keys() == old.sites.keys() and all(s is old.sites[n] for n, s in sites.items()):
            index = old.index  # nothing changed: the periodic scan costs only the stats
        else:
            try:
                index = HostIndex({n: s.hosts for n, s in sites.items()},
                                  default=self._default, normalized=True)
            except InvalidHost as exc:  # pragma: no cover - hosts were validated by load_site
                raise SiteFileError(f"host index: {exc}") from exc
        for conflict in index.conflicts:
            if conflict not in old.conflicts and self.log_errors:
                log.warning("%s", conflict)
        snapshot = Snapshot(
            MappingProxyType(dict(sorted(sites.items()))),
            index,
            MappingProxyType(errors),
            index.conflicts,
            MappingProxyType(files),
        )
        return snapshot, tuple(failed)
