"""The page cache and its invalidation: :class:`~tenantkit.cache.pagecache.PageCache`,
content events and purge policies (:mod:`tenantkit.cache.events`), the bus that carries
events to every node (:mod:`tenantkit.cache.bus`) and the SQLAlchemy hooks that publish them
after a commit (:mod:`tenantkit.cache.hooks`)."""
