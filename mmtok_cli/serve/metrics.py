"""`GET /metrics`: the server's Prometheus metrics (prometheus_client's text format).

Each server (each Ray Serve replica) has its own registry, so one process can hold several without clashes.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mmtok_requests", "Chat completion requests by outcome: the HTTP status, or "
                                "'disconnected' when the client left first", ["status"], registry=r)
        self.queue = Gauge("mmtok_queue_length", "Requests waiting for a forward pass (images loading or loaded)",
                           registry=r)
        self.batch_size = Histogram("mmtok_batch_size", "Requests per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.vision_total = Counter("mmtok_vision_tokens", "Vision tokens of the answered requests' images",
                                    registry=r)
        self.vision_kept = Counter("mmtok_vision_tokens_kept", "Vision tokens the language model read", registry=r)
        self.prompt_tokens = Counter("mmtok_prompt_tokens", "Prompt tokens the language model read (pruned)",
                                     registry=r)
        self.completion_tokens = Counter("mmtok_completion_tokens", "Tokens generated, for answered requests and "
                                         "for those whose client left before the end", registry=r)
        self.latency = Histogram("mmtok_request_latency_seconds", "From a request's arrival to its last byte",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("mmtok_time_to_first_token_seconds", "From a request's arrival to its first "
                              "generated token", buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
