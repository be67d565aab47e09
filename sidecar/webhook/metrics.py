"""The injection webhook's metrics, on a registry of their own (the webhook is its own Deployment)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.metrickit import PREFIX, Kind, Label, declare
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


class WebhookMetrics:
    """The webhook's own metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reviews = REVIEWS.counter(self.registry)
        self.duration = REVIEW_DURATION.histogram(self.registry)
        self.cert_reloads = CERT_RELOADS.counter(self.registry)
        # every series the alerts and the dashboard use exists at zero from the start, so that
        # rate() and increase() see the first event (docs/metrics.md)
        for scope in Scope:
            for result in REVIEW_RESULTS:
                self.reviews.labels(scope.value, result)
        for result in RESULTS:
            self.cert_reloads.labels(result)
