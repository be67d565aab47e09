"""The [policy] config section: defaults, environment, and errors that name the key."""

from __future__ import annotations

import pytest

from sidecar import config as config_mod
from sidecar.configkit import ConfigError


def test_defaults() -> None:
    policy = config_mod.load(env={}).policy
    assert (policy.dir, policy.backend, policy.on_error, policy.reload_interval) == ("", "embedded", "refuse", 5.0)
    assert policy.run_tests_on_load and not policy.dry_run


def test_environment_overrides() -> None:
    policy = config_mod.load(env={
        "SIDECAR_POLICY_DIR": "/etc/policies", "SIDECAR_POLICY_HASH_KEY_FILE": "/var/run/key",
        "SIDECAR_POLICY_ON_ERROR": "last_good", "SIDECAR_POLICY_RELOAD_INTERVAL": "250ms",
        "SIDECAR_POLICY_DRY_RUN": "true",
    }).policy
    assert policy.dir == "/etc/policies" and policy.hash_key_file == "/var/run/key"
    assert policy.on_error == "last_good" and policy.reload_interval == 0.25 and policy.dry_run


@pytest.mark.parametrize(("env", "key", "text"), [
    ({"SIDECAR_POLICY_BACKEND": "opa"}, "policy.opa_url", "is required when policy.backend is 'opa'"),
    ({"SIDECAR_POLICY_BACKEND": "wasm"}, "policy.backend (from SIDECAR_POLICY_BACKEND)",
     "choose one of 'embedded', 'opa'"),
    ({"SIDECAR_POLICY_ON_ERROR": "ignore"}, "policy.on_error (from SIDECAR_POLICY_ON_ERROR)",
     "choose one of 'refuse', 'last_good'"),
    ({"SIDECAR_POLICY_OPA_URL": "opa:8181"}, "policy.opa_url (from SIDECAR_POLICY_OPA_URL)", "must be a URL"),
    ({"SIDECAR_POLICY_OPA_PATH": "otlp sidecar"}, "policy.opa_path (from SIDECAR_POLICY_OPA_PATH)", "package path"),
    ({"SIDECAR_POLICY_CACHE_SIZE": "0"}, "policy.cache_size (from SIDECAR_POLICY_CACHE_SIZE)", "at least 1"),
])
def test_errors_name_the_key(env: dict[str, str], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(env=env)
    assert caught.value.key == key
    assert text in caught.value.message
