"""Prometheus metrics and JSON logs that carry the request id and job id.

Metrics live in the process that does the work: the API process in the embedded default;
each Celery worker exposes its own with ``voxagent worker --metrics-port``.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from prometheus_client import Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

REQUEST_LATENCY = Histogram("voxagent_http_request_seconds", "HTTP request latency",
                            ["method", "route", "status"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
JOB_DURATION = Histogram("voxagent_job_seconds", "Analysis job wall time", ["outcome", "kind"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
STAGE_DURATION = Histogram("voxagent_job_stage_seconds", "Wall time per stage of a job", ["stage"],
                           buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 120))
QUEUE_DEPTH = Gauge("voxagent_queue_depth", "Jobs queued or running (from the job store)")
JOBS_SUBMITTED = Counter("voxagent_jobs_submitted_total", "Jobs accepted", ["kind"])
REJECTED = Counter("voxagent_rejected_total", "Requests refused by backpressure", ["reason"])
WEBHOOKS = Counter("voxagent_webhook_deliveries_total", "Webhook delivery attempts", ["outcome"])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(time.time(), 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        rid, jid = request_id_var.get(), job_id_var.get()
        if rid:
            doc["request_id"] = rid
        if jid:
            doc["job_id"] = jid
        for key in ("method", "path", "status", "duration_ms", "tenant"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
