"""The WSGI shim: one catch-all virtual host for every site (the only package importing Flask).

::

    from tenantkit.web.app import create_app
    application = create_app()            # or: gunicorn 'tenantkit.web.wsgi:application'

Modules: :mod:`~tenantkit.web.dispatch` (Host -> site, 400/421), :mod:`~tenantkit.web.backends`
(in-process WSGI apps, HTTP upstreams), :mod:`~tenantkit.web.pagecache` (serve and fill the
page cache), :mod:`~tenantkit.web.hits` (a stored page as a response),
:mod:`~tenantkit.web.hotpages` (pages in memory, the hit lane), :mod:`~tenantkit.web.rwcookie`
(the read-your-writes cookie), :mod:`~tenantkit.web.consistency` (a site app's Router
tokens), :mod:`~tenantkit.web.admin` (``/_tenantkit/``), :mod:`~tenantkit.web.metrics`,
:mod:`~tenantkit.web.app` (``create_app``, the Flask extension), :mod:`~tenantkit.web.server`
(``tenantkit serve``), :mod:`~tenantkit.export.nginx` (``tenantkit nginx-config``).
"""
