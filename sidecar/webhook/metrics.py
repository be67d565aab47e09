"""The injection webhook's metrics, on a registry of their own (the webhook is its own Deployment)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.metrickit import PREFIX, Kind, Label, declare
from sidecar.overload.reasons import Action
from sidecar.webhook.inject import Scope

COMPONENT = "sidecar.webhook"
#: how an AdmissionReview was answered
REVIEW_RESULTS = ("injected", "skipped", "refused", "invalid", "error")
#: outcomes of a certificate reload: one vocabulary with the policy and TLS reloads
RESULTS = ("ok", "failed")
_WEBHOOK = "Exposed by the webhook server (`otlp-sidecar webhook serve`), not the sidecar."

REVIEWS = declare(
    f"{PREFIX}_webhook_reviews", Kind.counter, "{reviews}", "AdmissionReviews answered, by scope and result.",
    component=COMPONENT,
    labels=(Label("scope", tuple(scope.value for scope in Scope)), Label("result", REVIEW_RESULTS)),
    note=_WEBHOOK,
)
REVIEW_DURATION = declare(
    f"{PREFIX}_webhook_review_duration_seconds", Kind.histogram, "s", "Time to answer one AdmissionReview.",
    component=COMPONENT, buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0), note=_WEBHOOK,
)
CERT_RELOADS = declare(
    f"{PREFIX}_webhook_cert_reloads", Kind.counter, "{reloads}",
    "Serving certificate reloads, by result (ok, failed).", component=COMPONENT,
    labels=(Label("result", RESULTS),), note=_WEBHOOK,
)

#: what the webhook's listener does to a client: refusals before the review, timeouts, the caps
LISTENER_ACTIONS = (
    Action.request_too_large, Action.budget_full, Action.connection_share, Action.malformed_request,
    Action.header_timeout, Action.idle_timeout, Action.slow_body, Action.request_deadline,
    Action.connection_limit,
)
ACTIONS = declare(
    f"{PREFIX}_webhook_overload_actions", Kind.counter, "{actions}",
    "Protective actions of the webhook's listener, by action: requests refused before the review "
    "(too large, receive memory full, malformed), connections closed (timeouts, the connection "
    "cap, a TLS handshake over the cap: `connection_limit`).",
    component=COMPONENT, labels=(Label("action", tuple(action.value for action in LISTENER_ACTIONS)),),
    note=_WEBHOOK,
)
CONNECTIONS = declare(
    f"{PREFIX}_webhook_connections", Kind.gauge, "{connections}",
    "Open connections of the webhook's listener (handshakes in progress not included).",
    component=COMPONENT, note=_WEBHOOK,
)
CONNECTIONS_LIMIT = declare(
    f"{PREFIX}_webhook_connections_limit", Kind.gauge, "{connections}",
    "webhook.max_connections (the listener's connection cap).", component=COMPONENT, note=_WEBHOOK,
)


class WebhookMetrics:
    """The webhook's own metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reviews = REVIEWS.counter(self.registry)
        self.duration = REVIEW_DURATION.histogram(self.registry)
        self.cert_reloads = CERT_RELOADS.counter(self.registry)
        self.actions = ACTIONS.counter(self.registry)
        self.connections = CONNECTIONS.gauge(self.registry)
        self.connections_limit = CONNECTIONS_LIMIT.gauge(self.registry)
        # every series the alerts and the dashboard use exists at zero from the start, so that
        # rate() and increase() see the first event (docs/metrics.md)
        for scope in Scope:
            for result in REVIEW_RESULTS:
                self.reviews.labels(scope.value, result)
        for result in RESULTS:
            self.cert_reloads.labels(result)
        for action in LISTENER_ACTIONS:
            self.actions.labels(action.value)

    def count(self, action: Action, n: int = 1) -> None:
        """Count a protective action of the listener (the wire server's ``count``)."""
        self.actions.labels(action.value).inc(n)
