"""The page cache and its invalidation: :class:`~tenantkit.cache.pagecache.PageCache` (built
from :mod:`~tenantkit.cache.keys`, :mod:`~tenantkit.cache.pagefile`,
:mod:`~tenantkit.cache.generations`, :mod:`~tenantkit.cache.tagindex`,
:mod:`~tenantkit.cache.fill`, :mod:`~tenantkit.cache.stamp`, :mod:`~tenantkit.cache.stats`),
content events and purge policies (:mod:`tenantkit.cache.events`), the bus that carries
events to every node (:mod:`tenantkit.cache.bus`) and the SQLAlchemy hooks that publish them
after a commit (:mod:`tenantkit.cache.hooks`)."""
