"""The shim as a Flask app: dispatch by Host, page cache, admin endpoints.

::

    from tenantkit.web.app import create_app
    app = create_app()                    # settings from tenantkit.toml / TENANTKIT_* / defaults
    app = create_app(Settings(sites_dir=..., cache_dir=...))

:func:`create_app` puts the :class:`~tenantkit.web.extension.Tenantkit` extension (with the
``/_tenantkit/`` blueprint of :mod:`tenantkit.web.admin`) on a new Flask app; to use the
extension on an app of your own, see :mod:`tenantkit.web.extension`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from tenantkit.config import Settings
from tenantkit.web.extension import Tenantkit

__all__ = ["Tenantkit", "create_app"]


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    """A Flask app serving every site of *settings* (default: loaded from file and env)."""
    app = Flask("tenantkit")
    if settings is not None:
        app.config["TENANTKIT_SETTINGS"] = settings
    app.config.update({k: v for k, v in config.items() if k.startswith("TENANTKIT_")})
    Tenantkit(app)
    return app
