"""Shared state behind one small interface: the result cache in process (the embedded
default) or in Redis, shared by every ingress replica on every node."""

from serve_app.store.cache import ResultCache, open_result_cache

__all__ = ["ResultCache", "open_result_cache"]
