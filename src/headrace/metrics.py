"""Prometheus metrics of every component, in one registry served at the frontend's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

DOOR_REQUESTS = Counter(
    "headrace_door_requests", "WebDAV door requests by method and status", ["method", "status"], registry=REGISTRY
)
DOOR_BYTES = Counter("headrace_door_bytes", "Bytes moved through the door", ["direction"], registry=REGISTRY)
API_REQUESTS = Counter(
    "headrace_api_requests", "Frontend API requests by method and status", ["method", "status"], registry=REGISTRY
)
POOL_USED = Gauge("headrace_pool_used_bytes", "Bytes held by each pool", ["pool"], registry=REGISTRY)
POOL_FREE = Gauge("headrace_pool_free_bytes", "Bytes each pool can still take", ["pool"], registry=REGISTRY)
