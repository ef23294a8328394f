"""Database routing: statement classification, the read/write router, replica health and the
compressed MySQL protocol. Knows nothing of the web or the cache."""
