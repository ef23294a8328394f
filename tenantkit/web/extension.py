"""The Flask extension: the shim's state in ``app.extensions["tenantkit"]``.

::

    tenantkit = Tenantkit()
    app = Flask(__name__)
    app.config["TENANTKIT_CONFIG"] = "/etc/tenantkit.toml"
    tenantkit.init_app(app)   # state in app.extensions["tenantkit"], the /_tenantkit/ endpoints

(:func:`tenantkit.web.app.create_app` does this on a new app.) Config keys:
``TENANTKIT_SETTINGS`` (a :class:`~tenantkit.config.Settings`), ``TENANTKIT_CONFIG`` (a
settings file path, used when no Settings object is given), ``TENANTKIT_BACKGROUND`` (start
the site watcher and the invalidator now; default False -- ``tenantkit serve`` starts them in
every worker, :mod:`tenantkit.web.wsgi` at import).

The extension owns the registry, the backends, the process's one PageCache per site
(:class:`~tenantkit.cache.caches.SiteCaches`, shared with the invalidator it runs), the
metrics and the background work. Requests for a configured admin host go to Flask; every
other request goes to :class:`~tenantkit.web.dispatch.HostDispatcher` and on to the site,
through the page-cache middleware. Flask's own request machinery is never on a site's path.
:mod:`tenantkit.web.admin` imports this module; this module does not import the admin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.events import Purge
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.nodecounters import read_node_counters
from tenantkit.cache.publish import publish
from tenantkit.cache.purge import action_for, purge
from tenantkit.cache.status import read_statuses
from tenantkit.config import Settings
from tenantkit.db.router import Router
from tenantkit.errors import InvalidHost
from tenantkit.hosts import normalize_host, request_host
from tenantkit.registry import Registry
from tenantkit.sites import Site
from tenantkit.watch import SiteWatcher
from tenantkit.web import admin
from tenantkit.web.accesslog import AccessLog
from tenantkit.web.backends import BackendPool
from tenantkit.web.dispatch import HostDispatcher, SiteBackendApp
from tenantkit.web.hostlinks import HostLinks
from tenantkit.web.metrics import Metrics, replica_lag, watch_router
from tenantkit.web.pagecache import LANE_KEY, PageCacheMiddleware, plain_request_key
from tenantkit.web.rewarm import Rewarmer
from tenantkit.web.timing import UpstreamTimer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["Tenantkit"]

logger = logging.getLogger(__name__)

SECRET_FILE = ".tenantkit-secret"


def _secret_key(settings: Settings) -> str:
    """The configured secret, else one kept in ``cache_dir`` so every worker and node on
    the same cache directory signs alike (created once, mode 0600)."""
    if settings.web.secret_key:
        return settings.web.secret_key
    path = Path(settings.cache_dir) / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{SECRET_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # first writer wins; never replace a key others already use
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


class Tenantkit:
    """The Flask extension: owns the registry, backends, caches, metrics and background work."""

    def __init__(self, app: Flask | None = None, *, settings: Settings | None = None,
                 registry: Registry | None = None) -> None:
        self._settings = settings
        self._registry = registry
        self.background: list[Any] = []
        self._started = False
        #: True once start() ran: the health check then wants the invalidator running.
        self.background_expected = False
        self._lock = threading.Lock()
        self._router: Router | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        settings = self._settings or app.config.get("TENANTKIT_SETTINGS")
        if settings is None:
            settings = Settings.load(app.config.get("TENANTKIT_CONFIG"))
        self.settings: Settings = settings
        self.registry: Registry = self._registry or Registry.load(settings)
        web = settings.web
        self.metrics = Metrics(invalidation=partial(read_statuses, settings.cache_dir),
                               node=partial(read_node_counters, settings.cache_dir))
        self.pool = BackendPool(trusted_proxies=web.trusted_proxies)
        self.caches = SiteCaches()
        self.host_links = HostLinks(settings.cache_dir)
        self.pagecache = PageCacheMiddleware(
            UpstreamTimer(SiteBackendApp(self.pool), on_time=self.metrics.upstream),
            caches=self.caches, secret_key=_secret_key(settings),
            token_max_age=max(settings.database.pin_seconds, 1.0), host_links=self.host_links,
            on_cache=self.metrics.cache)
        self.dispatcher = HostDispatcher(
            self.registry, self.pagecache, trusted_proxies=web.trusted_proxies,
            unknown=web.unknown, on_response=self.metrics.request)
        self.rewarm = Rewarmer(self.dispatcher)
        admin_hosts = set()
        for raw in web.admin_hosts:
            try:
                admin_hosts.add(normalize_host(raw))
            except InvalidHost as exc:
                logger.error("settings: [web] admin_hosts: %s (ignored)", exc)
        self.admin_hosts = frozenset(admin_hosts)
        self._seen_sites = self.registry.sites
        # Links left by an earlier run for hosts no site (or another site) serves now.
        self.host_links.prune(self.registry.owner)
        self.metrics.sites.set(len(self._seen_sites))
        self.metrics.reload_errors.set(len(self.registry.errors))
        app.extensions["tenantkit"] = self
        app.register_blueprint(admin.blueprint)
        front: WSGIApplication = _Split(app.wsgi_app, self)
        if settings.log.access:
            front = AccessLog(front, site_of=self._site_of)
        app.wsgi_app = front  # type: ignore[method-assign,assignment]
        if app.config.get("TENANTKIT_BACKGROUND"):
            self.start()

    def _site_of(self, environ: WSGIEnvironment) -> str:
        """The site a request went to when the dispatcher did not say (a replayed hit)."""
        try:
            host = normalize_host(request_host(environ, self.settings.web.trusted_proxies))
        except InvalidHost:
            return "-"
        environ.setdefault("tenantkit.host", host)
        site = self.registry.resolve(host)
        return site.name if site is not None else "-"

    # -- sites coming and going ----------------------------------------------------------

    def sites_changed(self) -> None:
        """Release what removed or changed sites held (called when the snapshot changes)."""
        sites = self.registry.sites
        if sites is self._seen_sites:
            return
        self._seen_sites = sites
        self.pool.discard(sites)
        self.caches.discard(sites)
        self.host_links.prune(self.registry.owner)
        self.metrics.sites.set(len(sites))
        self.metrics.reload_errors.set(len(self.registry.errors))

    def reload(self) -> Any:
        report = self.registry.reload()
        self.sites_changed()
        return report

    # -- what the admin endpoints ask -----------------------------------------------------

    def router(self) -> Router:
        """The Router for the global ``[database]`` settings (built on first use)."""
        with self._lock:
            if self._router is None:
                self._router = Router.from_settings(self.settings)
                watch_router(self._router)
            return self._router

    def replica_lag(self) -> dict[str, float | None]:
        self.router()
        return replica_lag()

    def invalidator(self) -> Invalidator | None:
        for worker in self.background:
            if isinstance(worker, Invalidator):
                return worker
        return None

    def purge(self, site: Site, *, host: str, paths: list[str], tags: list[str],
              everything: bool) -> str:
        """Purge *site*'s pages on this node now (:func:`tenantkit.cache.purge.purge`), and
        publish the purge to the other nodes when the bus reaches any (returns "local" or
        "local+bus")."""
        normal = normalize_host(host) if paths else None
        event = Purge(site.name, paths=tuple(paths), tags=tuple(tags), host=normal,
                      all=everything)
        self.rewarm.purged(site, purge(self.caches.get(site), site, action_for(site, event)))
        if self.settings.bus.transport == "local":
            return "local"
        publish(event, settings=self.settings)
        return "local+bus"

    # -- background work (watcher, invalidator) ------------------------------------------

    def start(self) -> None:
        """Start the site watcher and the invalidator in this process (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.background_expected = True
            for factory in (self._watcher, self._invalidator):
                worker = factory()
                if worker is not None:
                    worker.start()
                    self.background.append(worker)

    def stop(self) -> None:
        with self._lock:
            workers, self.background = self.background, []
            self._started = False
        for worker in reversed(workers):
            try:
                worker.stop()
            except Exception:
                logger.exception("stopping %r failed", worker)
        self.rewarm.stop()
        self.pagecache.renders.stop()
        self.pagecache.commits.stop()
        self.pool.close()
        with self._lock:
            router, self._router = self._router, None
        if router is not None:
            router.close()

    def _watcher(self) -> Any:
        # Host links follow the registry at once: nginx serves hits without asking us.
        return SiteWatcher(self.registry, on_reload=self.sites_changed)

    def _invalidator(self) -> Any:
        return Invalidator(self.settings, self.registry, caches=self.caches,
                           on_purged=self.rewarm.purged)


class _Split:
    """Admin hosts go to Flask; every other request to the dispatcher."""

    def __init__(self, flask_app: WSGIApplication, ext: Tenantkit) -> None:
        self.flask_app = flask_app
        self.ext = ext
        self.dispatcher: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]] = \
            ext.dispatcher
        trusted = ext.settings.web.trusted_proxies
        if trusted:
            # Behind trusted proxies the scheme is theirs (Secure cookies, X-Forwarded-Proto
            # to upstreams); the host is taken by the dispatcher, the client address by the
            # proxy backend, so ProxyFix touches nothing else.
            self.dispatcher = ProxyFix(ext.dispatcher, x_for=0, x_proto=trusted, x_host=0,
                                       x_port=0, x_prefix=0)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        ext = self.ext
        sites = ext.registry.sites
        if sites is not ext._seen_sites:
            ext.sites_changed()
        key = plain_request_key(environ)
        if key is not None:
            # A repeat of a plain GET that was a hit: answered before any site resolution.
            replayed = ext.pagecache.replay(key, sites, environ, start_response,
                                            ext.metrics.request)
            if replayed is not None:
                return replayed
            environ[LANE_KEY] = (key, sites)
        if ext.admin_hosts:
            try:
                host = normalize_host(request_host(environ, ext.settings.web.trusted_proxies))
            except InvalidHost:
                host = ""
            if host in ext.admin_hosts:
                return self.flask_app(environ, start_response)
        return self.dispatcher(environ, start_response)
