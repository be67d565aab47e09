"""The [policy] section: where the Rego policies are and how they are evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.configkit import ConfigError, setting

#: how the policies apply: only `enforce` masks card numbers
MODES = ("enforce", "dry_run", "passthrough")


def _opa_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be a URL such as http://opa.policy:8181 (scheme http or https)"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has an invalid port"
    return None


def _decision_path(value: str) -> str | None:
    parts = value.strip("/").split("/")
    if not all(part.replace("_", "a").isalnum() for part in parts):
        return "must be a package path such as otlp_sidecar/main (letters, digits, _ and /)"
    return None


@dataclass(frozen=True)
class PolicyConfig:
    """The policy engine: where the Rego policies are and how they are evaluated."""

    dir: str = setting(
        "", "Directory of .rego policies (empty: the policy set bundled with the package).",
        kind="path", env=["SIDECAR_POLICY_DIR"],
    )
    mode: str = setting(
        "enforce",
        "`enforce` applies the policies; `dry_run` evaluates and counts them but forwards the data "
        "unchanged (card numbers in clear); `passthrough` loads no policy and forwards everything "
        "unchanged. Anything but `enforce` is logged as a WARNING at start and shown in `/policy`, "
        "`/ready` and the `otlp_sidecar_policy_mode` metric.",
        choices=list(MODES),
    )
    backend: str = setting(
        "embedded",
        "`embedded` evaluates the policies in-process with regopy; `opa` asks a remote OPA "
        "server over its REST API.",
        choices=["embedded", "opa"],
    )
    opa_url: str = setting(
        "", "Base URL of the remote OPA server (backend `opa`), e.g. http://opa.policy:8181.",
        check=_opa_url,
    )
    opa_path: str = setting(
        "otlp_sidecar/main",
        "Package path of the decision document: its rules `decisions` (per resource) and "
        "`pod_settings` (per pod) are queried.",
        check=_decision_path,
    )
    opa_timeout: float = setting(
        0.5, "Longest wait for one remote OPA decision.", kind="duration", min=0.001,
    )
    remote_cache_ttl: float = setting(
        60.0,
        "Backend `opa`: how long a cached plan is trusted (the remote policy can change "
        "without the sidecar knowing).",
        kind="duration", min=0.0,
    )
    on_error: str = setting(
        "refuse",
        "When the engine cannot decide: `refuse` answers a retryable error (gRPC UNAVAILABLE, "
        "HTTP 503); `last_good` applies the resource's last good plan, else the strict built-in "
        "plan. Unmasked data is never forwarded because the engine failed.",
        choices=["refuse", "last_good"],
    )
    dry_run: bool = setting(
        False, "Alias of `mode = \"dry_run\"` (kept for existing configurations).", kind="bool",
    )
    hash_key_file: str = setting(
        "", "File with the HMAC-SHA256 key for `hash` actions (a Kubernetes secret).",
        kind="path", env=["SIDECAR_POLICY_HASH_KEY_FILE"],
    )
    cache_size: int = setting(
        4096, "Plans kept in the decision cache (least recently used are evicted).",
        kind="int", min=1,
    )
    cache_max_bytes: int = setting(
        8 * 1024 * 1024,
        "Estimated memory the plan caches may hold (the decision cache and the last good plans, "
        "half each; equal plans counted once); least recently used plans are evicted beyond it.",
        kind="size", min=64 * 1024,
    )
    max_evaluations_per_second: float = setting(
        200.0,
        "New resources (plan-cache misses) the policy engine evaluates per second on average; a "
        "request bringing more than may start now gets HTTP 503 / gRPC UNAVAILABLE with "
        "Retry-After while the admitted ones are evaluated and cached for its retry.",
        kind="float", min=1.0,
    )
    evaluation_burst: int = setting(
        256,
        "New resources the policy engine takes at once (also the most evaluations queued on its "
        "thread); beyond it, as for max_evaluations_per_second.",
        kind="int", min=1, max=100_000,
    )
    reload_interval: float = setting(
        5.0, "How often the policy directory is checked for changes (0: never).",
        kind="duration", min=0.0,
    )
    decision_log: str = setting(
        "", "File to append the decision log to, as JSON lines (`-` for stderr; empty: off).",
        kind="path",
    )
    run_tests_on_load: bool = setting(
        True, "Run the `_test.rego` tests before a policy set goes live; a failure refuses it.",
        kind="bool",
    )

    def __post_init__(self) -> None:
        # `dry_run = true` is the older spelling of mode "dry_run": keep both views in step
        if self.dry_run and self.mode == "enforce":
            object.__setattr__(self, "mode", "dry_run")
        elif self.mode == "dry_run" and not self.dry_run:
            object.__setattr__(self, "dry_run", True)

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def validate(self) -> None:
        if self.mode == "passthrough" and self.dry_run:
            raise ConfigError(
                "policy.mode", "is 'passthrough' but policy.dry_run is true: choose one of the two"
            )
        if self.mode == "passthrough" and (self.dir or self.backend == "opa"):
            raise ConfigError(
                "policy.mode", "is 'passthrough' (no policy applied) but a policy is configured "
                "(policy.dir or backend 'opa'): remove one of the two"
            )
        if self.backend == "opa" and not self.opa_url:
            raise ConfigError("policy.opa_url", "is required when policy.backend is 'opa'")
