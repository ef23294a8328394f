"""The demo behind ``tenantkit demo``: two small blogs served by one shim.

:mod:`tenantkit.demo.blog` is the site app (Flask + SQLAlchemy through the
:class:`~tenantkit.db.router.Router`, pages tagged for the page cache, events published after
each commit); :mod:`tenantkit.demo.run` provisions the sites and serves them.
"""
