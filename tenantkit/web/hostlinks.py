"""Keeps ``cache_dir/_hosts/<host>`` pointing at the site whose page cache serves the host, so
the nginx catch-all (:mod:`tenantkit.export.nginx`) serves hits with no per-site configuration.

::

    links = HostLinks(settings.cache_dir)
    links.ensure("blog", "blog.example.org")     # after storing a page for that host
    links.prune(registry.owner)                  # or a mapping {"blog.example.org": "blog"}
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from tenantkit import layout

__all__ = ["HostLinks"]

logger = logging.getLogger(__name__)


class HostLinks:
    """Keeps ``cache_dir/_hosts/<host>`` pointing at the site that caches pages for it.

    ``host`` must already be normalised (the page cache only stores normalised hosts).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.dir = layout.hosts_dir(cache_dir)
        self._known: dict[str, str] = {}

    def ensure(self, site: str, host: str) -> None:
        """Point *host* at *site*, atomically (a temp symlink renamed over the old one)."""
        if self._known.get(host) == site or not host or "/" in host or host.startswith("."):
            return
        target = layout.host_link_target(site, host)
        link = self.dir / host
        try:
            if os.readlink(link) == target:
                self._known[host] = site
                return
        except OSError:
            pass
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{host}.{os.getpid()}.{uuid.uuid4().hex}"
            os.symlink(target, tmp)
            try:
                os.replace(tmp, link)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            logger.warning("cannot link %s for nginx: %s", link, exc)
            return
        self._known[host] = site

    def prune(self, owner: Mapping[str, str | None] | Callable[[str], str | None]) -> None:
        """Remove links whose host now belongs to another site, or to none.

        *owner* says which site serves a host now (``None``: no site): best
        :meth:`tenantkit.registry.Registry.owner`, or a mapping of each linked host.
        """
        owner_of = owner.get if isinstance(owner, Mapping) else owner
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("cannot prune nginx host links in %s: %s", self.dir, exc)
            return
        for host in names:
            if host.startswith("."):
                continue
            link = self.dir / host
            try:
                current = os.readlink(link)
            except OSError:
                continue
            site = owner_of(host)
            if site is None or current != layout.host_link_target(site, host):
                self._known.pop(host, None)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
