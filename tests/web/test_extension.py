"""The Flask extension: one PageCache per site in the shim process, shared by the
page-cache middleware, the admin purge and the invalidator the shim runs."""

from __future__ import annotations

import time

from tk_web import ServerClient, Sites
from werkzeug.test import Client

from tenantkit.cache.events import Purge
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.publish import publish
from tenantkit.web.app import create_app
from tenantkit.web.extension import Tenantkit


def _cache_header(client: Client, path: str) -> str:
    return str(client.get(path, headers={"Host": "alpha.test"}).headers["X-Tenantkit-Cache"])


def test_the_shim_keeps_one_page_cache_per_site(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    sites.add("beta", ["beta.test"])
    app = create_app(sites.settings(), TENANTKIT_BACKGROUND=True)
    ext: Tenantkit = app.extensions["tenantkit"]
    try:
        client = ServerClient(app, use_cookies=False)
        _cache_header(client, "/one/")
        assert _cache_header(client, "/one/") == "HIT"
        invalidator = ext.invalidator()
        assert isinstance(invalidator, Invalidator)
        assert invalidator.caches is ext.caches is ext.pagecache.caches
        alpha = ext.registry.sites["alpha"]
        assert invalidator.cache_for(alpha) is ext.caches.get(alpha)
        assert [site.name for site, _ in ext.caches.items()] == ["alpha"]

        handled = invalidator.handled
        publish(Purge("alpha", paths=("/one/",)), settings=ext.settings)
        deadline = time.monotonic() + 15
        while invalidator.handled == handled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert invalidator.handled == handled + 1
        assert _cache_header(client, "/one/") != "HIT"  # purged through the shared cache
        caches = ext.caches.items()
        assert [site.name for site, _ in caches] == ["alpha"]  # still one object for alpha
        assert caches[0][1] is invalidator.cache_for(alpha)
    finally:
        ext.stop()
