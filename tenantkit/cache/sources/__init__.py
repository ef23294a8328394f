"""Where invalidations come from besides the bus: the local replica's binary log.

- :mod:`~tenantkit.cache.sources.tablemaps`: what a changed row of a site's table purges
  (``wordpress``, ``punbb``, ``tables``), in the tag vocabulary of :mod:`tenantkit.cache.events`;
- :mod:`~tenantkit.cache.sources.binlog`: :class:`~tenantkit.cache.sources.binlog.BinlogSource`
  reads the node's own replica binlog and purges through :mod:`tenantkit.cache.purge`.
"""
