"""A plain HTTP file store for slugs, build caches and sources."""
