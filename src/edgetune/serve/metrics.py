"""The server's Prometheus metrics, in a registry of its own (GET /metrics)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServerMetrics:
    """Requests, tokens in and out, queue depth, batch size, latencies."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgetune_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("edgetune_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.completion_tokens = Counter("edgetune_completion_tokens", "tokens generated", registry=r)
        self.finished = Counter("edgetune_generations", "generations ended, by finish reason", ["reason"], registry=r)
        self.rejected = Counter("edgetune_rejected", "requests refused at once because the queue was full", registry=r)
        self.queue_depth = Gauge("edgetune_queue_depth", "requests waiting for a batch row", registry=r)
        self.active = Gauge("edgetune_active_requests", "requests holding a batch row", registry=r)
        self.batch_size = Histogram("edgetune_batch_size", "rows per engine step", buckets=BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram(
            "edgetune_step_seconds", "time of one engine step", buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "edgetune_time_to_first_token_seconds",
            "from admission to the first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "edgetune_request_seconds", "from admission to the last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.adapters_loaded = Gauge("edgetune_adapters_loaded", "adapters in the engine's slots", registry=r)
        self.jobs = Gauge("edgetune_fine_tuning_jobs", "fine-tuning jobs by status", ["status"], registry=r)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
