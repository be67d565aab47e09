"""The [policy] section: where the Rego policies are and how they are evaluated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.configkit import ConfigError, http_url_problem, setting

#: how the policies apply: only `enforce` masks card numbers
MODES = ("enforce", "dry_run", "passthrough")
_BUNDLE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _opa_url(value: str) -> str | None:
    if not value:
        return None
    return http_url_problem(value, "http://opa.policy:8181")


def _decision_path(value: str) -> str | None:
    parts = value.strip("/").split("/")
    if not all(part.replace("_", "a").isalnum() for part in parts):
        return "must be a package path such as otlp_sidecar/main (letters, digits, _ and /)"
    return None


def bundle_source(entry: str) -> tuple[str, str]:
    """``name=source`` or ``source`` -> (name, source); the default name is the file's stem."""
    name, sep, source = entry.partition("=")
    if not sep or "/" in name or ":" in name:
        name, source = "", entry
    source = source.strip()
    if not name:
        try:
            path = urlsplit(source).path if "://" in source else source
        except ValueError:  # a malformed URL: refused by its own check, with the default name
            path = ""
        name = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar.gz").removesuffix(".tgz") or "bundle"
    return name.strip(), source


def _bundle_sources(values: list[str]) -> str | None:
    names: set[str] = set()
    for entry in values:
        name, source = bundle_source(entry)
        if not _BUNDLE_NAME_RE.fullmatch(name):
            return f"bundle name {name!r} must be letters, digits, '_', '-' or '.' (not starting with '.')"
        if name in names:
            return f"two bundles are named {name!r}: name them (`name=source`)"
        names.add(name)
        if "://" in source:
            problem = _opa_url(source)
            if problem:
                return f"{source!r} " + problem.replace("such as http://opa.policy:8181", "such as "
                                                        "https://bundles.example/pci.tar.gz")
        elif not source:
            return "a bundle source is empty"
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
        "half each; equal plans counted once, with what the rewriters compile from them); least "
        "recently used plans are evicted beyond it.",
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

    bundles: list[str] = setting(
        [],
        "OPA bundles to load instead of `dir`: each an `https://` / `http://` URL of a bundle server "
        "(polled with `If-None-Match`), a `.tar.gz` file or a bundle directory, optionally named "
        "`name=source` (default name: the file name without `.tar.gz`). Several bundles must have "
        "disjoint `roots` in their `.manifest`. With `dir` set as well, `dir` is one more bundle. "
        "See docs/bundles.md.",
        kind="list", env=["SIDECAR_POLICY_BUNDLES"], check=_bundle_sources,
    )
    bundle_polling_min_delay: float = setting(
        60.0, "Shortest wait between two polls of a bundle source (the wait is random between "
        "the min and max delay, so a fleet does not poll in step).", kind="duration", min=0.05,
    )
    bundle_polling_max_delay: float = setting(
        120.0, "Longest wait between two polls of a bundle source, and the ceiling of the back-off "
        "after a failed download.", kind="duration", min=0.05,
    )
    bundle_start_timeout: float = setting(
        30.0, "How long the start waits for every bundle to be downloaded, verified and loaded; "
        "past it the sidecar does not start (it never serves without its policies).",
        kind="duration", min=0.1,
    )
    bundle_timeout: float = setting(
        10.0, "Longest time for one bundle download (connect and body).", kind="duration", min=0.1,
    )
    bundle_verification_key_file: str = setting(
        "", "Key that bundles must be signed with (`.signatures.json`, as `opa sign` writes): a PEM "
        "public key or certificate for RS*/PS*/ES*, the shared secret for HS*. When set, an unsigned "
        "or tampered bundle is refused and the last good set stays.",
        kind="path", env=["SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE"],
    )
    bundle_verification_algorithm: str = setting(
        "RS256", "Signature algorithm of the verification key.",
        choices=["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                 "HS256", "HS384", "HS512"],
    )
    bundle_verification_key_id: str = setting(
        "", "Key id a signature must name (`kid`; empty: any). `opa build --signing-key` names `default`.",
    )
    bundle_verification_scope: str = setting(
        "", "Scope a signature must carry (`opa build --scope`; empty: a signature without scope).",
    )
    bundle_max_download_size: int = setting(
        8 * 1024 * 1024, "Largest bundle accepted as downloaded (compressed).", kind="size", min=1024,
    )
    bundle_max_size: int = setting(
        16 * 1024 * 1024, "Largest bundle accepted once decompressed (all members together).",
        kind="size", min=1024,
    )
    bundle_ca_file: str = setting(
        "", "PEM CA bundle to verify an `https://` bundle server with (empty: the system's).", kind="path",
    )
    bundle_token_file: str = setting(
        "", "File holding a bearer token sent as `Authorization: Bearer` to bundle servers (never logged).",
        kind="path",
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
        if self.bundles and self.backend == "opa":
            raise ConfigError(
                "policy.bundles", "are loaded by the embedded engine; with backend 'opa' give the "
                "bundles to OPA itself (its `bundles` configuration)"
            )
        if self.bundles and self.mode == "passthrough":
            raise ConfigError("policy.mode", "is 'passthrough' (no policy applied) but policy.bundles are set")
        if self.bundle_polling_max_delay < self.bundle_polling_min_delay:
            raise ConfigError(
                "policy.bundle_polling_max_delay", "must not be shorter than policy.bundle_polling_min_delay"
            )
        if self.backend == "opa" and not self.opa_url:
            raise ConfigError("policy.opa_url", "is required when policy.backend is 'opa'")
