"""Every Prometheus metric of MarketSwarm, defined once on an injectable registry.

Names follow ``marketswarm_<noun>_<unit>``: counters end in ``_total``, durations in ``_seconds``,
sizes in ``_bytes``; gauges that count things end in ``_entries`` (the unit: stream entries, clients,
a connected flag) and the one fraction in ``_ratio``.
Labels: ``agent`` (the group name) and ``stream`` (the Redis key) wherever they apply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from marketswarm.topology.agent import Count

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)

AS = ("agent", "stream")


def _multiprocess() -> bool:
    # Under `marketswarm run` every agent process writes to one directory and the gateway's /metrics
    # aggregates them; gauges then need a merge mode.
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """All metrics, registered on ``registry`` (a fresh one per test, the default one in processes)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        mp: dict[str, Any] = {"multiprocess_mode": "livesum"} if _multiprocess() else {}
        mpmax: dict[str, Any] = {"multiprocess_mode": "livemax"} if _multiprocess() else {}

        # runtime (topology/runtime.py)
        self.entries_in = Counter("marketswarm_entries_in_total", "Stream entries read by an agent.", AS, registry=r)
        self.events_in = Counter(
            "marketswarm_events_in_total", "Events inside the entries an agent read.", AS, registry=r
        )
        self.entries_acked = Counter(
            "marketswarm_entries_acked_total", "Entries committed and acknowledged.", AS, registry=r
        )
        self.entries_out = Counter(
            "marketswarm_entries_out_total", "Entries appended to an output stream.", AS, registry=r
        )
        self.events_out = Counter(
            "marketswarm_events_out_total", "Events an agent emitted (per input stream).", AS, registry=r
        )
        self.batch_duration = Histogram(
            "marketswarm_batch_duration_seconds",
            "Time to decode, step and commit one batch.",
            AS,
            buckets=BATCH_BUCKETS_S,
            registry=r,
        )
        self.step_failures = Counter(
            "marketswarm_step_failures_total", "Batches whose step raised (entries isolated).", AS, registry=r
        )
        self.commit_failures = Counter(
            "marketswarm_commit_failures_total",
            "Commits whose effects failed (nothing acked; the entries isolated and retried).",
            AS,
            registry=r,
        )
        self.replica_lag = Counter(
            "marketswarm_replica_ack_timeouts_total",
            "Writes (raw batches, commits) that fewer replicas than MARKETSWARM_MIN_REPLICAS_ACK acknowledged in time.",
            ["writer"],
            registry=r,
        )
        self.dead_letters = Counter("marketswarm_dead_letters_total", "Entries moved to <stream>.dlq.", AS, registry=r)
        self.reclaimed = Counter(
            "marketswarm_reclaimed_total", "Pending entries claimed from idle consumers.", AS, registry=r
        )
        self.trimmed_pending = Counter(
            "marketswarm_trimmed_pending_total",
            "Pending entries trimmed from their stream before being processed.",
            AS,
            registry=r,
        )
        self.trimmed = Counter(
            "marketswarm_trimmed_entries_total",
            "Entries trimmed from a stream by its byte or age bound (topology/retention.py).",
            AS,
            registry=r,
        )
        self.trimmed_unread = Counter(
            "marketswarm_trimmed_unread_total",
            "Entries trimmed before a group read them: a stream held past its hard byte bound.",
            AS,
            registry=r,
        )
        self.retention_held = Counter(
            "marketswarm_retention_held_total",
            "Trims held back because a group has not acknowledged entries beyond the stream's bounds.",
            AS,
            registry=r,
        )
        self.stream_memory = Gauge(
            "marketswarm_stream_memory_bytes",
            "Memory of a stream (MEMORY USAGE, sampled) when last trimmed.",
            ("stream",),
            registry=r,
            **mpmax,
        )
        self.redis_errors = Counter(
            "marketswarm_redis_errors_total", "Redis errors an agent recovered from.", AS, registry=r
        )

        # ingestion (agents/normalize/normalizer.py, agents/sources/)
        self.rejects = Counter(
            "marketswarm_rejects_total", "Bad input sent to a rejects stream, by reason.", (*AS, "reason"), registry=r
        )
        self.dropped = Counter(
            "marketswarm_dropped_total",
            "Input dropped on purpose, by reason (unconfigured underlying, duplicate print, ...).",
            (*AS, "reason"),
            registry=r,
        )
        self.source_frames = Counter(
            "marketswarm_source_frames_total", "Raw frames a source wrote.", ("source", "stream"), registry=r
        )
        self.source_bytes = Counter(
            "marketswarm_source_bytes_total", "Raw bytes a source wrote.", ("source", "stream"), registry=r
        )
        self.shed = Counter(
            "marketswarm_shed_frames_total",
            "Raw frames a source dropped because the agents were too far behind (backpressure).",
            ("source", "stream"),
            registry=r,
        )
        self.shed_events = Counter(
            "marketswarm_shed_events_total",
            "Market events inside the frames a source dropped (backpressure).",
            ("source", "stream"),
            registry=r,
        )
        self.chain_poll_duration = Histogram(
            "marketswarm_chain_poll_duration_seconds",
            "Latency of one full chain snapshot poll (all pages).",
            ("underlying",),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.chain_poll_interval = Gauge(
            "marketswarm_chain_poll_interval_seconds",
            "The cadence the chain poller chose from its measured latency.",
            ("underlying",),
            registry=r,
            **mpmax,
        )
        self.chain_poll_failures = Counter(
            "marketswarm_chain_poll_failures_total",
            "Failed chain polls, by status.",
            ("underlying", "status"),
            registry=r,
        )
        self.ws_reconnects = Counter(
            "marketswarm_ws_reconnects_total", "WebSocket reconnections.", ("feed",), registry=r
        )
        self.ws_statuses = Counter(
            "marketswarm_ws_status_total", "Provider status frames, by status.", ("feed", "status"), registry=r
        )
        self.ws_evictions = Counter(
            "marketswarm_ws_evictions_total",
            "WebSocket connections the provider closed for its connection limit (max_connections).",
            ("feed",),
            registry=r,
        )
        self.ws_subscriptions = Gauge(
            "marketswarm_ws_subscriptions_entries",
            "Option contracts the WebSocket connections are subscribed to.",
            ("feed",),
            registry=r,
            **mpmax,
        )
        self.source_write_blocked = Gauge(
            "marketswarm_source_write_blocked_entries",
            "1 while a source holds frames because Redis does not take them (retrying with backoff), else 0.",
            ("feed",),
            registry=r,
            **mpmax,
        )
        self.ws_buffer_depth = Gauge(
            "marketswarm_ws_buffer_entries",
            "Frames waiting in the WebSocket buffer for the Redis writer.",
            ("feed",),
            registry=r,
            **mpmax,
        )
        self.ws_connected = Gauge(
            "marketswarm_ws_connected_entries",
            "1 while the WebSocket feed is connected and authenticated.",
            ("feed",),
            registry=r,
            **mpmax,
        )

        # state (agents/hydrate/hydrator.py)
        self.admissions = Counter(
            "marketswarm_admissions_total",
            "Admission outcomes: A new slot, B newer, C older/equal (discarded), X outside the epoch.",
            (*AS, "outcome"),
            registry=r,
        )
        self.trade_flow_prints = Counter(
            "marketswarm_trade_flow_prints_total",
            "Counted trade prints classified into the liquidity-intent flow (bought, sold or unclassified).",
            ("underlying",),
            registry=r,
        )
        self.trade_conditions = Counter(
            "marketswarm_trade_prints_total",
            "Trade prints by what their conditions make them: regular, no_last (volume only), cancel and "
            "excluded (neither volume nor last), unknown (a code not in the table, counted as regular).",
            ("underlying", "kind"),
            registry=r,
        )
        self.epoch_promotions = Counter(
            "marketswarm_epoch_promotions_total", "Epochs promoted to active.", ("underlying",), registry=r
        )
        self.epoch_holds = Counter(
            "marketswarm_epoch_holds_total",
            "Chain snapshots whose far smaller geometry was held for confirmation, not promoted.",
            ("underlying",),
            registry=r,
        )

        # models (agents/calc/, agents/publish/)
        self.tiles_recomputed = Counter(
            "marketswarm_tiles_recomputed_total", "Tiles a calc agent recomputed.", ("agent", "underlying"), registry=r
        )
        self.tile_coverage = Gauge(
            "marketswarm_tile_coverage_ratio",
            "Staged tiles over grid slots, per strategy.",
            ("underlying", "strategy"),
            registry=r,
            **mpmax,
        )
        self.versions = Counter(
            "marketswarm_versions_published_total",
            "Versions published, by the condition that triggered them.",
            ("underlying", "strategy", "reason"),
            registry=r,
        )
        self.tiles_changed = Counter(
            "marketswarm_tiles_changed_total",
            "Tiles changed, added or removed by published versions (divide by versions for per version).",
            ("underlying", "strategy"),
            registry=r,
        )
        self.publish_latency = Histogram(
            "marketswarm_event_to_publish_seconds",
            "From the source's receive time of the newest input to the diff's append.",
            ("underlying", "strategy"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        # alerts (agents/vigil/)
        self.alerts_fired = Counter(
            "marketswarm_alerts_fired_total", "Alerts a rule fired.", ("underlying", "rule", "severity"), registry=r
        )
        self.alerts_suppressed = Counter(
            "marketswarm_alerts_suppressed_total", "Firings inside a rule's cooldown.", ("underlying",), registry=r
        )
        self.alert_commit_seconds = Histogram(
            "marketswarm_alert_commit_seconds",
            "From an alert's event time to its append to the alerts stream.",
            ("underlying",),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.alert_deliveries = Counter(
            "marketswarm_alert_deliveries_total",
            "Webhook tries, by outcome (delivered, failed: retried, dead: dead-lettered).",
            ("receiver", "outcome"),
            registry=r,
        )
        self.alert_delivery_seconds = Histogram(
            "marketswarm_alert_delivery_seconds",
            "From an alert's event time to its receiver's 2xx answer.",
            ("receiver",),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.alert_dead_letters = Counter(
            "marketswarm_alert_dead_letters_total",
            "Alerts a receiver did not take before their deadline (ms:{U}:alerts:dead.v1).",
            ("receiver",),
            registry=r,
        )

        # operations (topology/observe.py, agents/gateway/app.py)
        self.group_lag = Gauge(
            "marketswarm_group_lag_entries",
            "Entries not yet delivered to a group (XINFO GROUPS lag).",
            AS,
            registry=r,
            **mpmax,
        )
        self.group_pending = Gauge(
            "marketswarm_group_pending_entries",
            "Entries delivered but not acknowledged (XINFO GROUPS pending).",
            AS,
            registry=r,
            **mpmax,
        )
        self.stream_length = Gauge(
            "marketswarm_stream_length_entries", "Entries in a stream.", ("stream",), registry=r, **mpmax
        )
        self.model_age = Gauge(
            "marketswarm_model_age_seconds",
            "Wall time since the event time of the newest published version (set when scraped).",
            ("underlying", "strategy"),
            registry=r,
            **mpmax,
        )
        self.publish_interval = Gauge(
            "marketswarm_publish_interval_seconds",
            "The publishers' time boundary (MARKETSWARM_PUBLISH_INTERVAL_MS), for the staleness alert.",
            ("underlying", "strategy"),
            registry=r,
            **mpmax,
        )
        self.sse_clients = Gauge(
            "marketswarm_sse_clients_entries", "Connected SSE clients.", ("stream",), registry=r, **mp
        )
        self.sse_refused = Counter(
            "marketswarm_gateway_refused_total",
            "Requests the gateway refused at its limits: SSE connections over the total or per-address "
            "cap, sign-in attempts over the rate limit, and requests the store did not answer within their "
            "budget (reason: total, address, sign-in, budget).",
            ("reason",),
            registry=r,
        )

    def apply(self, counts: Iterable[Count]) -> None:
        """The metric samples a step asked for (topology/agent.py's ``Count``), once its commit succeeded."""
        now_ns = 0
        for c in counts:
            metric = getattr(self, c.metric).labels(*c.labels)
            if c.how == "inc":
                metric.inc(c.value)
            elif c.how == "set":
                metric.set(c.value)
            elif c.how == "observe":
                metric.observe(c.value)
            else:
                now_ns = now_ns or time.time_ns()
                metric.observe(max(0.0, now_ns - c.value) / 1e9)
