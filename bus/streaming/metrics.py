"""Prometheus metrics of a bus process: one registry, a ``bus_`` prefix, bounded labels.

Labels are agents, topics, partitions, reasons, matters and task states: all from fixed
catalogues. Never an event id, a USCC or a person: those would make the series unbounded
(and the USCC is the key of a person's business).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AgentMetrics:
    """What the batch runtime records of every batch agent: the worker's and a sink's."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "bus") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            f"{prefix}_events_in", "Records an agent read", ["agent", "topic"], registry=r
        )
        self.events_out = Counter(
            f"{prefix}_events_out", "Records an agent produced", ["agent", "topic"], registry=r
        )
        self.deadletters = Counter(
            f"{prefix}_deadletters", "Events rejected, by reason", ["agent", "reason"], registry=r
        )
        self.transactions = Counter(
            f"{prefix}_transactions", "Kafka transactions of an agent, by outcome",
            ["agent", "outcome"], registry=r,
        )  # fmt: skip
        self.transaction_seconds = Histogram(
            f"{prefix}_transaction_seconds",
            "Exactly once: a committed transaction's commit, from its records handed to the "
            "producer to its end (offsets, acknowledgements, commit)",
            ["agent"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            f"{prefix}_batch_seconds", "Time to process one batch (before acknowledgements)",
            ["agent"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            f"{prefix}_consumer_lag", "Records in a partition not yet read by an agent",
            ["agent", "topic", "partition"], registry=r,
        )  # fmt: skip


class Metrics(AgentMetrics):
    """Every metric the worker exports, in a registry the caller owns (tests own theirs)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "bus") -> None:
        super().__init__(registry, prefix)
        r = self.registry
        self.decision_seconds = Histogram(
            f"{prefix}_decision_seconds", "From the triggering event to the bus's decision",
            ["matter"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.tasks = Gauge(
            f"{prefix}_tasks",
            "Tasks held by this worker, by matter, assignee and state "
            "(open, accepted, overdue, escalated, completed, rejected)",
            ["matter", "department", "state"], registry=r,
        )  # fmt: skip
        self.case_steps = Counter(
            f"{prefix}_case_steps",
            "Records the case engine handled: triggers, answers and deadline ticks",
            registry=r,
        )  # fmt: skip
        self.case_steps_refetched = Counter(
            f"{prefix}_case_steps_refetched",
            "Case steps Faust's consumer skipped, which the engine read again itself",
            registry=r,
        )  # fmt: skip
        self.handover = Counter(
            f"{prefix}_handover_events",
            "Canonical events the correlate agent took decoded from ingest in the same worker "
            "(taken) or decoded itself (decoded)",
            ["result"], registry=r,
        )  # fmt: skip
        self.events_typed = Counter(
            f"{prefix}_events_typed", "Events an agent accepted or produced, by type and source",
            ["agent", "event_type", "department"], registry=r,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            f"{prefix}_delivery_seconds",
            "From the bus accepting an event (its canonical record) to its delivery into a "
            "department's inbox",
            ["agent"], buckets=(*_SECONDS, 30, 60, 300), registry=r,
        )  # fmt: skip
        self.calendar_fallback_years = Gauge(
            f"{prefix}_calendar_fallback_years",
            "Years counted on statutory holidays alone, lacking the yearly notice", registry=r,
        )  # fmt: skip


class GatewayMetrics:
    """What the HTTP gateway exports: requests by route template and status, and latency."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "bus") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{prefix}_gateway_requests", "HTTP requests, by route template, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            f"{prefix}_gateway_request_seconds", "Time to answer a request, by route template",
            ["route", "method"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.published = Counter(
            f"{prefix}_gateway_published", "Events the gateway put on ingress, by department",
            ["department"], registry=r,
        )  # fmt: skip
        self.case_reads = Counter(
            f"{prefix}_gateway_case_reads", "Cases read from the evidence log for GET /v1/cases "
            "(only for departments that take part, or just published into the case)", registry=r,
        )  # fmt: skip
