"""The WSGI entry point for gunicorn, mod_wsgi or uWSGI::

    gunicorn 'tenantkit.web.wsgi:application'
    TENANTKIT_CONFIG=/etc/tenantkit.toml uwsgi --module tenantkit.web.wsgi:application

Settings come from ``$TENANTKIT_CONFIG`` (else ``./tenantkit.toml``, else the embedded
defaults). The site watcher and the invalidator start in the importing process -- with
pre-forking servers, import it in each worker (gunicorn's default, uWSGI's ``lazy-apps``),
not in the master. ``tenantkit serve`` does all this for you.
"""

from __future__ import annotations

from tenantkit.web.app import create_app

__all__ = ["application"]

application = create_app(TENANTKIT_BACKGROUND=True)
