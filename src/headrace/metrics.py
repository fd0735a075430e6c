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
EVENT_LOG_HEAD = Gauge("headrace_event_log_head", "Newest offset in the event log", registry=REGISTRY)
EVENT_LOG_TAIL = Gauge("headrace_event_log_tail", "Oldest offset the event log still holds", registry=REGISTRY)
EVENT_CONSUMER_LAG = Gauge(
    "headrace_event_consumer_lag", "Events in the log a consumer has not read yet", ["consumer"], registry=REGISTRY
)
SSE_CHANNELS = Gauge("headrace_sse_channels", "Open event channels", registry=REGISTRY)
SSE_CONNECTIONS = Gauge("headrace_sse_connections", "Clients connected to event channels", registry=REGISTRY)
