"""Prometheus metrics, per strategy. /metrics also shows vLLM's own (vllm:*)
metrics, which the in-process engine registers in the same default registry."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ponder_requests", "Requests served", ["endpoint", "strategy", "status"])
LATENCY = Histogram("ponder_request_latency_seconds", "Request latency", ["strategy"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300))
ENGINE_CALLS = Counter("ponder_engine_calls", "Engine calls made by strategies", ["strategy"])
TOKENS = Counter("ponder_tokens", "Tokens processed", ["strategy", "kind"])
ERRORS = Counter("ponder_errors", "Requests that failed", ["strategy", "type"])
IN_FLIGHT = Gauge("ponder_requests_in_flight", "HTTP requests being served")
READS = Counter("ponder_format_reads", "Judge verdicts (kind=verdicts: written, constrained, unread) and "
                "candidate answers (kind=answers: extracted, unextracted) read in the task's formats",
                ["strategy", "kind", "outcome"])
ENGINE_UNFINISHED = Gauge("ponder_engine_unfinished_requests",
                          "Requests the engines are still working on", ["model"])


def record(strategy: str, prompt_tokens: int, completion_tokens: int, calls: int,
           reads: Mapping[tuple[str, str], int]) -> None:
    ENGINE_CALLS.labels(strategy).inc(calls)
    TOKENS.labels(strategy, "prompt").inc(prompt_tokens)
    TOKENS.labels(strategy, "completion").inc(completion_tokens)
    for (kind, outcome), n in reads.items():
        READS.labels(strategy, kind, outcome).inc(n)
