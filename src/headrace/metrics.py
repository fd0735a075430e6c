"""Prometheus metrics of every component, in one registry served at the frontend's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
KAFKA_RELAY_OFFSET = Gauge(
    "headrace_kafka_relay_offset",
    "Newest event offset the Kafka relay has had acknowledged (and stored as its position)",
    ["topic"],
    registry=REGISTRY,
)
KAFKA_RELAY_LAG = Gauge(
    "headrace_kafka_relay_lag", "Events in the log not yet acknowledged by Kafka", ["topic"], registry=REGISTRY
)
FN_ACTIVATIONS = Counter(
    "headrace_fn_activations", "Finished activations by action and outcome", ["action", "status"], registry=REGISTRY
)
FN_COLD_STARTS = Counter("headrace_fn_cold_starts", "Activations that started a worker", ["action"], registry=REGISTRY)
FN_LATENCY = Histogram(
    "headrace_fn_duration_seconds",
    "Activation run time (start to end)",
    ["action"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
FN_QUEUED = Gauge("headrace_fn_queued", "Activations waiting to run, per action", ["action"], registry=REGISTRY)
FN_RUNNING = Gauge("headrace_fn_running", "Activations running, per action", ["action"], registry=REGISTRY)
FN_WORKERS = Gauge("headrace_fn_workers", "Warm worker processes, per action", ["action"], registry=REGISTRY)
TAPE_OPS = Counter(
    "headrace_tape_operations",
    "Tape operations (store, restore, evict, remove) by outcome",
    ["op", "outcome"],
    registry=REGISTRY,
)
TAPE_BYTES = Counter(
    "headrace_tape_bytes", "Bytes written to tape (store) and read back (restore)", ["op"], registry=REGISTRY
)
SOURCE_EVENTS = Counter(
    "headrace_source_events", "Events of other systems entered into the log, per source", ["source"], registry=REGISTRY
)
SOURCE_ERRORS = Counter(
    "headrace_source_errors", "Runs of a source that ended in an error (then restarted)", ["source"], registry=REGISTRY
)
SOURCE_RUNNING = Gauge("headrace_source_running", "Whether this process runs the source", ["source"], registry=REGISTRY)
