"""Decide whether a pod gets the sidecar, and build the JSONPatch that injects it.

Pure functions over plain dicts (the pod as the API server sends it): no I/O (but for
``injection.sidecar_config_file``, which the PCI check reads as the sidecar would), so
the HTTP layer, the ``webhook inject`` command and the tests share one code path.
The patch only uses ``add`` operations, ordered so that every index it names is
still valid when the operation is applied (RFC 6902 applies them in sequence).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar import __version__
from sidecar.configkit import CONFIG_FILE, ConfigError, env_names
from sidecar.masked_text import quoted
from sidecar.webhook.bypass import around_the_sidecar, listed, with_env_from
from sidecar.webhook.config import APP_PROTOCOLS, InjectionConfig, PolicySetConfig, WebhookConfig, quantity_bytes

ANNOTATION_INJECT = "otlp-sidecar.io/inject"
ANNOTATION_POLICY = "otlp-sidecar.io/policy"
ANNOTATION_STATUS = "otlp-sidecar.io/status"
ANNOTATION_PROTOCOL = "otlp-sidecar.io/protocol"
LABEL_INJECTED = "otlp-sidecar.io/injected"
SIDECAR_NAME = "otlp-sidecar"
ADMIN_PORT_NAME = "otlp-sc-admin"
APP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
APP_PROTOCOL_ENV = "OTEL_EXPORTER_OTLP_PROTOCOL"

PODINFO_DIR = "/etc/otlp-sidecar/podinfo"
MTLS_DIR = "/etc/otlp-sidecar/tls"
HASH_KEY_DIR = "/etc/otlp-sidecar/hash-key"
BUNDLE_KEY_DIR = "/etc/otlp-sidecar/bundle-key"
BUNDLE_TOKEN_DIR = "/etc/otlp-sidecar/bundle-token"
BUNDLE_CA_DIR = "/etc/otlp-sidecar/bundle-ca"
DISK_QUEUE_DIR = "/var/lib/otlp-sidecar/queue"
#: the part of the disk queue's emptyDir the sidecar may fill: the rest is headroom for what the
#: budget does not count (acknowledgement files, the lock, the filesystem's own blocks), so the
#: kubelet never evicts the pod
DISK_QUEUE_SHARE = 0.9

VOLUME_PODINFO = "otlp-sidecar-podinfo"
VOLUME_POLICIES = "otlp-sidecar-policies"
VOLUME_MTLS = "otlp-sidecar-mtls"
VOLUME_HASH_KEY = "otlp-sidecar-hash-key"
VOLUME_TMP = "otlp-sidecar-tmp"
VOLUME_BUNDLE_KEY = "otlp-sidecar-bundle-key"
VOLUME_BUNDLE_TOKEN = "otlp-sidecar-bundle-token"
VOLUME_BUNDLE_CA = "otlp-sidecar-bundle-ca"
VOLUME_DISK_QUEUE = "otlp-sidecar-queue"


class Scope(enum.Enum):
    """Why the webhook was called; each is one entry of the MutatingWebhookConfiguration."""

    #: any namespace: inject only when the pod is annotated ``otlp-sidecar.io/inject: "true"``
    POD = "pod"
    #: a namespace labelled for injection: inject unless the pod opts out with ``"false"``
    NAMESPACE = "namespace"
    #: a namespace in PCI scope: every pod gets the sidecar; opting out is refused
    PCI = "pci"


#: containers (or init containers) a pod may have for the webhook to patch it
MAX_CONTAINERS = 256
#: a container name is a DNS label (RFC 1123), as the API server requires: the names go into the
#: status annotation (JSON in JSON in the base64 patch), 512 names of 3,000 'é' made a 14 MiB answer
MAX_CONTAINER_NAME = 63
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: the most of a patch, serialized (defence in depth: the largest pod the webhook injects, 256
#: containers and 256 init containers with 63-character names, takes about 150 KB)
MAX_PATCH_BYTES = 1024 * 1024
#: what the sidecar's config loader is given of the env of a sidecar container a PCI-scope pod
#: carries (the webhook runs it on the event loop): one value (UTF-8 bytes), names and values
#: together, entries. The injected env is about 25 entries of short values, and OTLP header values
#: are tokens of a few hundred bytes; a 3 MiB OTEL_EXPORTER_OTLP_HEADERS of "%41" held the loop
#: 1.7-3.4 s and took 300 MiB. Within these the loader takes a few milliseconds.
MAX_SIDECAR_ENV_VALUE = 8 * 1024
MAX_SIDECAR_ENV_TOTAL = 64 * 1024
MAX_SIDECAR_ENV_ENTRIES = 512
#: the most of a command (command + args) of a carried sidecar read: the injected one has 6 parts
_MAX_COMMAND_PARTS = 16
#: the most terminationGracePeriodSeconds the API server stores (int64)
_MAX_INT64 = 2**63 - 1


class InvalidPod(ValueError):
    """The pod object is malformed (the message says where)."""


class Refused(Exception):
    """The pod must not be admitted as it is (the message tells the user what to change)."""


@dataclass(frozen=True)
class Decision:
    """What the webhook does with one pod."""

    inject: bool
    reason: str
    patch: list[dict[str, Any]] = field(default_factory=list)
    #: said to whoever created the pod (AdmissionReview warnings: kubectl prints them)
    warnings: list[str] = field(default_factory=list)


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) to ``parts``, escaping ``~`` and ``/`` in keys."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def decide(pod: Any, namespace: str, scope: Scope, config: WebhookConfig) -> Decision:
    """Decide for ``pod`` (created in ``namespace``); raise Refused or InvalidPod."""
    if not isinstance(pod, dict):
        raise InvalidPod("the object is not a JSON object")
    metadata = _mapping(pod, "metadata", "metadata")
    spec = _mapping(pod, "spec", "spec")
    annotations = _string_map(metadata, "annotations")
    _string_map(metadata, "labels")
    containers = _containers(spec, "containers", required=True)
    init_containers = _containers(spec, "initContainers", required=False)
    _unique_names(containers + init_containers)
    injection = config.injection

    if namespace in injection.excluded_namespaces:
        return Decision(False, f"namespace {namespace} is excluded from injection")
    claims_sidecar = ANNOTATION_STATUS in annotations or any(
        c.get("name") == SIDECAR_NAME for c in containers + init_containers
    )
    if scope is Scope.PCI and claims_sidecar and not _has_genuine_sidecar(containers + init_containers, injection):
        # in PCI scope a copied status annotation or a look-alike container must not skip the sidecar
        raise Refused(
            f"namespace {namespace} is in PCI scope: the pod claims an otlp-sidecar ({ANNOTATION_STATUS} "
            f"or a container named {SIDECAR_NAME}) that is not the injected one ({injection.image}); "
            "remove the annotation or rename the container"
        )
    if scope is Scope.PCI and claims_sidecar:
        # the pod is admitted with the sidecar it carries (reinvocation, a re-created pod): it must mask too.
        # Container names are unique (_unique_names): the loader runs at most once per review
        for container in containers + init_containers:
            if container.get("name") == SIDECAR_NAME:
                where = f"the pod's {SIDECAR_NAME} container"
                problem = _carried_env_problem(container, where) or _pci_mode_problem(container, injection, where)
                if problem is not None:
                    raise Refused(f"namespace {namespace} is in PCI scope: {problem}")
        # and its apps send through it (a manifest carrying the sidecar, or a reinvocation)
        apps = [c for c in containers + init_containers if c.get("name") != SIDECAR_NAME]
        _bypass_warnings(apps, namespace, scope, injection)
    if ANNOTATION_STATUS in annotations:
        return Decision(False, f"already injected ({ANNOTATION_STATUS} is set)")
    if any(c.get("name") == SIDECAR_NAME for c in containers + init_containers):
        return Decision(False, f"the pod already has a container named {SIDECAR_NAME}")

    wanted = _inject_annotation(annotations)
    if scope is Scope.PCI:
        if wanted is False:
            raise Refused(
                f"namespace {namespace} is in PCI scope: its pods must run with the otlp-sidecar; "
                f'remove the annotation {ANNOTATION_INJECT}: "false"'
            )
        if spec.get("hostNetwork") is True:
            raise Refused(
                f"namespace {namespace} is in PCI scope: hostNetwork pods cannot get the "
                "otlp-sidecar and are not admitted"
            )
    elif scope is Scope.NAMESPACE and wanted is False:
        return Decision(False, f'opted out ({ANNOTATION_INJECT}: "false")')
    elif scope is Scope.POD and wanted is not True:
        return Decision(False, f'not requested ({ANNOTATION_INJECT} is not "true")')
    if spec.get("hostNetwork") is True:
        return Decision(False, "hostNetwork pods are not injected (the sidecar's ports would be the node's)")

    set_name, policy_set = _policy_set(annotations, config)
    if scope is Scope.PCI and policy_set is None and not injection.bundles:
        raise Refused(
            f"namespace {namespace} is in PCI scope but the webhook has no policy set to give the pod "
            "(no [policy_sets] in its settings: the chart's policies.enabled=false without "
            "policies.defaultSet, or `webhook inject` without --config); PCI-scope pods are only "
            "admitted with the chart's policies"
        )
    sidecar = sidecar_container(policy_set is not None, injection, workload_of(metadata))
    if scope is Scope.PCI:
        # the container injected below, as the sidecar will load it
        problem = _pci_mode_problem(sidecar, injection, "injection.extra_env (the chart's sidecar.extraEnv)")
        if problem is not None:
            raise Refused(f"namespace {namespace} is in PCI scope: {problem}")
    warnings = _bypass_warnings(containers + init_containers, namespace, scope, injection)
    protocol = _app_protocol(annotations, injection)
    reason = f"injected ({scope.value} scope)"
    if injection.bundles:
        reason += "; policy bundles: " + ", ".join(b.partition("=")[0] for b in injection.bundles)
    elif policy_set is None:
        reason += "; no policy set configured: the sidecar applies the policies bundled in its image"
    patch = _patch(pod, scope, set_name, policy_set, injection, protocol, sidecar)
    _check_patch_size(patch)
    return Decision(True, reason, patch, warnings)


def _bypass_warnings(
    containers: list[dict[str, Any]], namespace: str, scope: Scope, injection: InjectionConfig,
) -> list[str]:
    """Refused (PCI scope) or warnings for containers whose OTLP endpoint variables point around
    the sidecar (:mod:`sidecar.webhook.bypass`); a warning for those taking variables from envFrom."""
    warnings = []
    found = around_the_sidecar(containers, (injection.grpc_port, injection.http_port))
    if found and scope is Scope.PCI:
        raise Refused(
            f"namespace {namespace} is in PCI scope: {listed(found)}: telemetry sent there leaves the pod "
            f"around the {SIDECAR_NAME}, card numbers unmasked; remove these variables (the webhook "
            f"points {APP_ENDPOINT_ENV} at the sidecar), or point them at 127.0.0.1 and the sidecar's port"
        )
    if found:
        warnings.append(f"{listed(found)}: telemetry sent there bypasses the {SIDECAR_NAME}'s policies "
                        "(card numbers are not masked); remove these variables to send it through the sidecar")
    env_from = with_env_from(containers)
    if env_from:
        warnings.append(
            f"containers {', '.join(repr(n) for n in env_from[:3])} take variables from envFrom, which the "
            f"webhook cannot read: an OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT set there sends that signal "
            f"around the {SIDECAR_NAME}, unmasked")
    return warnings


def _check_patch_size(patch: list[dict[str, Any]]) -> None:
    """InvalidPod when the patch is too large to answer (or not JSON): what the pod gave that goes
    into it (container names, its owner's name) is bounded by the API server, not here."""
    try:
        size = len(json.dumps(patch, allow_nan=False))  # ASCII: characters are bytes
    except ValueError as exc:  # NaN or infinity: the API server could not read the answer
        raise InvalidPod(f"the patch that injects the sidecar would not be JSON ({exc})") from None
    if size > MAX_PATCH_BYTES:
        raise InvalidPod(f"the patch that injects the sidecar would take {size} bytes, more than the "
                         f"{MAX_PATCH_BYTES} the webhook answers (are the pod's names and its owner's "
                         "name Kubernetes names?)")


def _app_protocol(annotations: Mapping[str, str], injection: InjectionConfig) -> str:
    value = annotations.get(ANNOTATION_PROTOCOL)
    if value is None:
        return injection.app_protocol
    if value.strip() not in APP_PROTOCOLS:
        allowed = ", ".join(f'"{p}"' for p in APP_PROTOCOLS)
        raise Refused(f"annotation {ANNOTATION_PROTOCOL} must be one of {allowed}, got {value!r}")
    return value.strip()


def app_endpoint(protocol: str, injection: InjectionConfig) -> str:
    """The sidecar's endpoint for an app speaking ``protocol``: app_endpoint's host, the listener's port."""
    parts = urlsplit(injection.app_endpoint)
    port = injection.grpc_port if protocol == "grpc" else injection.http_port
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


#: a Job a CronJob created is named <cronjob>-<scheduled time in minutes since the epoch>
_CRONJOB_JOB = re.compile(r"^(?P<name>.+)-(?P<minutes>[0-9]{8,})$")


def workload_of(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) of the workload that owns the pod, from its ownerReferences ("", "" for none).

    A ReplicaSet named ``<deployment>-<pod-template-hash>`` is its Deployment; a Job named
    ``<cronjob>-<minutes>`` is its CronJob. Other controllers are named as they are.
    """
    owners = metadata.get("ownerReferences")
    if not isinstance(owners, list):
        return "", ""
    refs = [o for o in owners if isinstance(o, dict) and isinstance(o.get("kind"), str)
            and isinstance(o.get("name"), str) and o.get("name")]
    controllers = [o for o in refs if o.get("controller") is True] or refs
    if not controllers:
        return "", ""
    kind, name = controllers[0]["kind"], controllers[0]["name"]
    given_labels = metadata.get("labels")
    labels: dict[str, Any] = given_labels if isinstance(given_labels, dict) else {}
    if kind == "ReplicaSet":
        template_hash = labels.get("pod-template-hash")
        if isinstance(template_hash, str) and template_hash and name.endswith("-" + template_hash):
            return "Deployment", name[: -len(template_hash) - 1]
    if kind == "Job":
        match = _CRONJOB_JOB.match(name)
        if match:
            return "CronJob", match.group("name")
    return kind, name


def _has_genuine_sidecar(containers: list[dict[str, Any]], injection: InjectionConfig) -> bool:
    """The pod runs the configured sidecar image under the sidecar's name."""
    return any(c.get("name") == SIDECAR_NAME and c.get("image") == injection.image for c in containers)


def _mapping(obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise InvalidPod(f"{where} must be an object")
    return value


def _string_map(metadata: Mapping[str, Any], key: str) -> dict[str, str]:
    value = metadata.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidPod(f"metadata.{key} must be an object of strings")
    return value


def _containers(spec: Mapping[str, Any], key: str, *, required: bool) -> list[dict[str, Any]]:
    value = spec.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise InvalidPod(f"spec.{key} must be a {'non-empty ' if required else ''}list")
    if len(value) > MAX_CONTAINERS:
        # the patch grows with them (env for each, every name in the status annotation): 550,000
        # tiny containers made a 157 MB answer and held the loop 8.5 s
        raise InvalidPod(f"spec.{key} holds {len(value)} containers, more than the {MAX_CONTAINERS} "
                         "the webhook injects into")
    for index, container in enumerate(value):
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise InvalidPod(f"spec.{key}[{index}] must be an object with a name")
        name = container["name"]
        if len(name) > MAX_CONTAINER_NAME or not _DNS_LABEL.fullmatch(name):
            raise InvalidPod(f"spec.{key}[{index}].name {_shown(name)} is not a container name: a DNS label "
                             f"(RFC 1123) of at most {MAX_CONTAINER_NAME} characters a-z, 0-9 and '-', "
                             "starting and ending with a letter or digit")
        env = container.get("env")
        if env is not None and (not isinstance(env, list) or not all(isinstance(e, dict) for e in env)):
            raise InvalidPod(f"spec.{key}[{index}].env must be a list of objects")
        for item_index, item in enumerate(env or []):
            where = f"spec.{key}[{index}].env[{item_index}]"
            if not isinstance(item.get("name"), str):
                raise InvalidPod(f"{where}.name must be a string, got {_shown(item.get('name'))}")
            if item.get("value") is not None and not isinstance(item["value"], str):
                raise InvalidPod(f"{where}.value must be a string, got {_shown(item['value'])}")
    return value


def _unique_names(containers: list[dict[str, Any]]) -> None:
    """InvalidPod when two containers (or init containers) have the same name, as the API server
    refuses: a pod with 512 containers claiming to be the sidecar ran the sidecar's loader 512 times."""
    seen: set[str] = set()
    for container in containers:
        name = container["name"]
        if name in seen:
            raise InvalidPod(f"more than one container is named {_shown(name)}: container names must be "
                             "unique across spec.containers and spec.initContainers")
        seen.add(name)


def _shown(value: Any) -> str:
    """A value of the pod quoted in a message: cut short, card numbers masked; other than a string or
    a number, its JSON type."""
    if isinstance(value, str):
        return repr(quoted(value, 64))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        text = repr(value)
        return quoted(text, 64) if len(text) <= 64 else f"a number of {len(text)} digits"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _inject_annotation(annotations: Mapping[str, str]) -> bool | None:
    value = annotations.get(ANNOTATION_INJECT)
    if value is None:
        return None
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise Refused(f'annotation {ANNOTATION_INJECT} must be "true" or "false", got {value!r}')


def _policy_set(
    annotations: Mapping[str, str],
    config: WebhookConfig,
) -> tuple[str, PolicySetConfig | None]:
    requested = annotations.get(ANNOTATION_POLICY)
    name = requested if requested is not None else config.injection.default_policy_set
    if name in config.policy_sets:
        return name, config.policy_sets[name]
    if requested is None and (not config.policy_sets or not name):
        return "", None
    known = ", ".join(sorted(config.policy_sets)) or "(none configured)"
    raise Refused(f"annotation {ANNOTATION_POLICY}: policy set {name!r} does not exist; the sets are: {known}")


#: Kubernetes' terminationGracePeriodSeconds when a pod sets none
DEFAULT_POD_GRACE = 30


def _patch(
    pod: dict[str, Any],
    scope: Scope,
    set_name: str,
    policy_set: PolicySetConfig | None,
    injection: InjectionConfig,
    protocol: str,
    sidecar: dict[str, Any],
) -> list[dict[str, Any]]:
    spec = pod["spec"]
    metadata = pod["metadata"]
    ops: list[dict[str, Any]] = []
    native = injection.mode == "native"

    # 1. app containers (and, for a native sidecar that starts first, the init containers)
    targets = [("containers", spec["containers"])]
    if native and spec.get("initContainers"):
        targets.append(("initContainers", spec["initContainers"]))
    given_env: list[str] = []
    for key, containers in targets:
        for index, container in enumerate(containers):
            env = container.get("env")
            added = _app_env(env or [], protocol, injection)
            if not added:
                continue
            if env is None:
                ops.append({"op": "add", "path": pointer("spec", key, index, "env"), "value": added})
            else:
                path = pointer("spec", key, index, "env", "-")
                ops.extend({"op": "add", "path": path, "value": item} for item in added)
            given_env.append(container["name"])

    # 2. volumes
    volumes = _volumes(policy_set, injection)
    if spec.get("volumes") is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    else:
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)

    # 3. the sidecar: first init container (native) or last container
    if native:
        if spec.get("initContainers") is None:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})

    # 4. a native sidecar gets SIGTERM once the app containers exited, within the pod's grace: give
    # it its own flush time on top (Kubernetes' default grace is 30 s)
    if native:
        grace = spec.get("terminationGracePeriodSeconds")
        grace = DEFAULT_POD_GRACE if grace is None else grace
        limit = _MAX_INT64 - injection.shutdown_grace
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= limit:
            raise InvalidPod(f"spec.terminationGracePeriodSeconds must be a whole number of seconds from 0 to "
                             f"{limit}, got {_shown(grace)}")
        ops.append({"op": "add", "path": "/spec/terminationGracePeriodSeconds",
                    "value": grace + injection.shutdown_grace})

    # 5. record what was done, so a second call (reinvocation) changes nothing
    status = {
        "version": __version__,
        "mode": injection.mode,
        "scope": scope.value,
        "policySet": set_name,
        "image": injection.image,
        "appEnv": given_env,
        "appProtocol": protocol,
    }
    _add_map_entry(ops, metadata, "annotations", ANNOTATION_STATUS, json.dumps(status, sort_keys=True))
    _add_map_entry(ops, metadata, "labels", LABEL_INJECTED, "true")
    return ops


def _app_env(env: list[dict[str, Any]], protocol: str, injection: InjectionConfig) -> list[dict[str, Any]]:
    """The endpoint (and protocol) variables an app container gets; none when it set its endpoint.

    A container that sets OTEL_EXPORTER_OTLP_PROTOCOL itself keeps it, and gets the endpoint
    of that protocol.
    """
    names = {item.get("name"): item for item in env}
    if APP_ENDPOINT_ENV in names:
        return []
    own = names.get(APP_PROTOCOL_ENV)
    if own is not None:
        value = own.get("value")
        chosen = value.strip() if isinstance(value, str) and value.strip() in APP_PROTOCOLS else protocol
        return [{"name": APP_ENDPOINT_ENV, "value": app_endpoint(chosen, injection)}]
    return [
        {"name": APP_ENDPOINT_ENV, "value": app_endpoint(protocol, injection)},
        {"name": APP_PROTOCOL_ENV, "value": protocol},
    ]


def _add_map_entry(
    ops: list[dict[str, Any]],
    metadata: Mapping[str, Any],
    key: str,
    name: str,
    value: str,
) -> None:
    if metadata.get(key) is None:
        ops.append({"op": "add", "path": pointer("metadata", key), "value": {name: value}})
    else:
        ops.append({"op": "add", "path": pointer("metadata", key, name), "value": value})


def _volumes(policy_set: PolicySetConfig | None, injection: InjectionConfig) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": VOLUME_PODINFO,
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        },
        {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if injection.disk_queue_size_limit:
        volumes.append({"name": VOLUME_DISK_QUEUE, "emptyDir": {"sizeLimit": injection.disk_queue_size_limit}})
    if policy_set is not None:
        source: dict[str, Any] = {"name": policy_set.config_map}
        if policy_set.items:
            source["items"] = [{"key": k, "path": p} for k, p in sorted(policy_set.items.items())]
        volumes.append({"name": VOLUME_POLICIES, "configMap": source})
    if injection.mtls_secret:
        volumes.append({"name": VOLUME_MTLS, "secret": {"secretName": injection.mtls_secret}})
    if injection.hash_key_secret:
        volumes.append({"name": VOLUME_HASH_KEY, "secret": {"secretName": injection.hash_key_secret}})
    if injection.bundle_key_secret:
        volumes.append({"name": VOLUME_BUNDLE_KEY, "secret": {"secretName": injection.bundle_key_secret}})
    if injection.bundle_token_secret:
        volumes.append({"name": VOLUME_BUNDLE_TOKEN, "secret": {"secretName": injection.bundle_token_secret}})
    if injection.bundle_ca_secret:
        volumes.append({"name": VOLUME_BUNDLE_CA, "secret": {"secretName": injection.bundle_ca_secret}})
    return volumes


def sidecar_container(
    with_policies: bool, injection: InjectionConfig, workload: tuple[str, str] = ("", ""),
) -> dict[str, Any]:
    """The sidecar container (or native sidecar init container) for ``injection``.

    ``workload`` is the (kind, name) of the pod's controller (:func:`workload_of`).
    """
    command = ["otlp-sidecar", "run", "--grace", str(injection.shutdown_grace)]
    if injection.sidecar_config_file:
        command += ["--config", injection.sidecar_config_file]
    mounts = [
        {"name": VOLUME_PODINFO, "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": VOLUME_TMP, "mountPath": "/tmp"},
    ]
    if injection.disk_queue_size_limit:
        mounts.append({"name": VOLUME_DISK_QUEUE, "mountPath": DISK_QUEUE_DIR})
    if with_policies:
        mounts.append({"name": VOLUME_POLICIES, "mountPath": injection.policy_dir, "readOnly": True})
    if injection.mtls_secret:
        mounts.append({"name": VOLUME_MTLS, "mountPath": MTLS_DIR, "readOnly": True})
    if injection.hash_key_secret:
        mounts.append({"name": VOLUME_HASH_KEY, "mountPath": HASH_KEY_DIR, "readOnly": True})
    if injection.bundle_key_secret:
        mounts.append({"name": VOLUME_BUNDLE_KEY, "mountPath": BUNDLE_KEY_DIR, "readOnly": True})
    if injection.bundle_token_secret:
        mounts.append({"name": VOLUME_BUNDLE_TOKEN, "mountPath": BUNDLE_TOKEN_DIR, "readOnly": True})
    if injection.bundle_ca_secret:
        mounts.append({"name": VOLUME_BUNDLE_CA, "mountPath": BUNDLE_CA_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": injection.image,
        "imagePullPolicy": injection.image_pull_policy,
        "command": command,
        "env": _sidecar_env(with_policies, injection, workload),
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": injection.admin_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "resources": _resources(injection),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": injection.run_as_user,
            "runAsGroup": injection.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # the app waits for this in native mode: kubelet starts the next containers
        # only once the sidecar's startup probe succeeded
        "startupProbe": _probe(injection.startup_path, injection, period=1, failures=injection.startup_timeout),
        "livenessProbe": _probe(injection.liveness_path, injection, period=10, failures=3),
        "readinessProbe": _probe(injection.readiness_path, injection, period=5, failures=3),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if injection.mode == "native":
        container["restartPolicy"] = "Always"
    return container


def _probe(path: str, injection: InjectionConfig, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": injection.admin_port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }


def _resources(injection: InjectionConfig) -> dict[str, Any]:
    def given(cpu: str, memory: str, storage: str) -> dict[str, str]:
        return {k: v for k, v in (("cpu", cpu), ("memory", memory), ("ephemeral-storage", storage)) if v}

    requests = given(injection.cpu_request, injection.memory_request, injection.storage_request)
    limits = given(injection.cpu_limit, injection.memory_limit, injection.ephemeral_storage_limit)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _bundle_env(injection: InjectionConfig) -> list[dict[str, Any]]:
    """The policy.bundle* settings of the sidecar (docs/bundles.md); none without bundles."""
    if not injection.bundles:
        return []
    env = [
        {"name": "SIDECAR_POLICY_BUNDLES", "value": ",".join(injection.bundles)},
        {"name": "SIDECAR_POLICY_BUNDLE_POLLING_MIN_DELAY", "value": injection.bundle_polling_min_delay},
        {"name": "SIDECAR_POLICY_BUNDLE_POLLING_MAX_DELAY", "value": injection.bundle_polling_max_delay},
    ]
    if injection.bundle_key_secret:
        env += [
            {"name": "SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_FILE",
             "value": f"{BUNDLE_KEY_DIR}/{injection.bundle_key_secret_key}"},
            {"name": "SIDECAR_POLICY_BUNDLE_VERIFICATION_ALGORITHM", "value": injection.bundle_key_algorithm},
            {"name": "SIDECAR_POLICY_BUNDLE_VERIFICATION_KEY_ID", "value": injection.bundle_key_id},
            {"name": "SIDECAR_POLICY_BUNDLE_VERIFICATION_SCOPE", "value": injection.bundle_scope},
        ]
    if injection.bundle_token_secret:
        env.append({"name": "SIDECAR_POLICY_BUNDLE_TOKEN_FILE",
                    "value": f"{BUNDLE_TOKEN_DIR}/{injection.bundle_token_secret_key}"})
    if injection.bundle_ca_secret:
        env.append({"name": "SIDECAR_POLICY_BUNDLE_CA_FILE",
                    "value": f"{BUNDLE_CA_DIR}/{injection.bundle_ca_secret_key}"})
    return env


def _sidecar_env(
    with_policies: bool, injection: InjectionConfig, workload: tuple[str, str],
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "SIDECAR_GRPC_ENDPOINT", "value": f"127.0.0.1:{injection.grpc_port}"},
        {"name": "SIDECAR_HTTP_ENDPOINT", "value": f"127.0.0.1:{injection.http_port}"},
        {"name": "SIDECAR_ADMIN_ENDPOINT", "value": f"0.0.0.0:{injection.admin_port}"},
        _field_env("SIDECAR_POD_NAME", "metadata.name"),
        _field_env("SIDECAR_POD_NAMESPACE", "metadata.namespace"),
        _field_env("SIDECAR_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("SIDECAR_POD_UID", "metadata.uid"),
        _field_env("SIDECAR_NODE_NAME", "spec.nodeName"),
        {"name": "SIDECAR_POD_LABELS_FILE", "value": f"{PODINFO_DIR}/labels"},
        {"name": "SIDECAR_POD_ANNOTATIONS_FILE", "value": f"{PODINFO_DIR}/annotations"},
    ]
    if injection.cluster_name:
        env.append({"name": "SIDECAR_CLUSTER_NAME", "value": injection.cluster_name})
    kind, name = workload
    if kind and name:
        env.append({"name": "SIDECAR_WORKLOAD_KIND", "value": kind})
        env.append({"name": "SIDECAR_WORKLOAD_NAME", "value": name})
    if injection.tenant_label:
        env.append(_field_env("SIDECAR_TENANT", f"metadata.labels['{injection.tenant_label}']"))
    elif injection.tenant_annotation:
        env.append(_field_env("SIDECAR_TENANT", f"metadata.annotations['{injection.tenant_annotation}']"))
    if with_policies:
        env.append({"name": "SIDECAR_POLICY_DIR", "value": injection.policy_dir})
    env += _bundle_env(injection)
    if injection.hash_key_secret:
        env.append(
            {
                "name": "SIDECAR_POLICY_HASH_KEY_FILE",
                "value": f"{HASH_KEY_DIR}/{injection.hash_key_secret_key}",
            }
        )
    if injection.upstream_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": injection.upstream_endpoint})
        env.append({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": injection.upstream_protocol})
        env.append(
            {
                "name": "OTEL_EXPORTER_OTLP_INSECURE",
                "value": "true" if injection.upstream_insecure else "false",
            }
        )
    if injection.mtls_secret:
        env += [
            {
                "name": "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "value": f"{MTLS_DIR}/{injection.ca_secret_key}",
            },
            {
                "name": "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "value": f"{MTLS_DIR}/{injection.cert_secret_key}",
            },
            {
                "name": "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                "value": f"{MTLS_DIR}/{injection.key_secret_key}",
            },
        ]
    if injection.disk_queue_size_limit:
        max_bytes = int(quantity_bytes(injection.disk_queue_size_limit) * DISK_QUEUE_SHARE)
        env += [
            {"name": "SIDECAR_EXPORTER_DISK_QUEUE_DIR", "value": DISK_QUEUE_DIR},
            {"name": "SIDECAR_EXPORTER_DISK_QUEUE_MAX_BYTES", "value": str(max_bytes)},
        ]
    fixed = {item["name"] for item in env}
    env += [{"name": k, "value": v} for k, v in sorted(injection.extra_env.items()) if k not in fixed]
    return env


def check_injected_sidecar(config: WebhookConfig) -> None:
    """Load the configuration an injected sidecar gets (its environment, as for a pod with the
    default policy set) as the sidecar loads it at start; ConfigError when every injected sidecar
    would refuse to start (an upstream that is its own listener, a policy mode it refuses, an
    invalid OTEL_* value): said once at the webhook's start, not by every pod's sidecar."""
    from sidecar.config import load  # the sidecar's loader: imported here, where it is used

    with_policies = bool(config.policy_sets) and not config.injection.bundles
    env = {item["name"]: item["value"] for item in _sidecar_env(with_policies, config.injection, ("", ""))
           if "value" in item}
    try:
        load(None, env=env)
    except ValueError as exc:  # ConfigError, or a value the loader fails on (http://[ as an endpoint)
        raise ConfigError("injection", f"every injected sidecar would refuse to start: {exc}") from None


#: the sidecar's settings that decide whether it masks: policy.mode and its older spelling policy.dry_run
_MODE_SETTINGS = ("mode", "dry_run")


def mode_variables() -> tuple[str, ...]:
    """The environment variables the sidecar reads its policy mode from, from the sidecar's own
    declarations (``SIDECAR_POLICY_MODE``, ``SIDECAR_POLICY_DRY_RUN``)."""
    from sidecar.policy.config import PolicyConfig

    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    return tuple(name for key in _MODE_SETTINGS for name in env_names("policy", fields[key]))


def _run_config_file(container: Mapping[str, Any], injection: InjectionConfig, where: str) -> tuple[str, str]:
    """(``--config`` file, problem) of a sidecar container: its command must be the one the webhook
    injects (``otlp-sidecar run [--grace N] [--config injection.sidecar_config_file]``), or the webhook
    cannot tell what configuration it loads."""
    command, args = container.get("command") or [], container.get("args") or []
    readable = isinstance(command, list) and isinstance(args, list) and len(command) + len(args) <= _MAX_COMMAND_PARTS
    argv = [str(part)[:1024] for part in [*command, *args]] if readable else []
    options = argv[2:]
    pairs = dict(zip(options[::2], options[1::2], strict=False))
    if (argv[:2] != ["otlp-sidecar", "run"] or len(options) % 2 or len(pairs) != len(options) // 2
            or not set(pairs) <= {"--grace", "--config"} or not pairs.get("--grace", "0").isdigit()):
        shown = repr(" ".join(argv)) if argv else "its image's entrypoint" if readable else "a long command"
        return "", (f"{where} runs {shown}, not the command the webhook injects (otlp-sidecar run "
                    "--grace N): the webhook cannot tell which policy mode it starts in; use the injected command")
    config_file = pairs.get("--config", "")
    if config_file and config_file != injection.sidecar_config_file:
        return "", (f"{where} runs with --config {config_file}, which the webhook cannot read (only "
                    "injection.sidecar_config_file): it cannot tell which policy mode the sidecar starts in; "
                    "remove --config")
    return config_file, ""


def _carried_env_problem(container: Mapping[str, Any], where: str) -> str | None:
    """Why the env of a sidecar container a PCI-scope pod carries is too large to hand to the
    sidecar's loader (MAX_SIDECAR_ENV_*): the pod is refused, as for a configuration the webhook
    cannot read."""
    env = container.get("env") or []
    after = (f"; PCI-scope pods are only admitted with a sidecar whose configuration the webhook reads, "
             f"at most {MAX_SIDECAR_ENV_ENTRIES} variables, {MAX_SIDECAR_ENV_VALUE} bytes a value and "
             f"{MAX_SIDECAR_ENV_TOTAL} bytes in all")
    if len(env) > MAX_SIDECAR_ENV_ENTRIES:
        return f"{where} has {len(env)} env entries" + after
    total = 0
    for item in env:  # names and values are strings (_containers)
        name, value = item.get("name", ""), item.get("value") or ""
        # characters first: a value of 3 MiB is not encoded to be measured
        size = len(value) if len(value) > MAX_SIDECAR_ENV_VALUE else len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_SIDECAR_ENV_VALUE:
            return f"{where} sets {_shown(name)} to a value of more than {MAX_SIDECAR_ENV_VALUE} bytes" + after
        total += size + len(name)
        if total > MAX_SIDECAR_ENV_TOTAL:
            return f"{where} sets env names and values of more than {MAX_SIDECAR_ENV_TOTAL} bytes" + after
    return None


def _pci_mode_problem(container: Mapping[str, Any], injection: InjectionConfig, where: str) -> str | None:
    """Why a PCI-scope pod cannot be admitted with this sidecar container (the one injected, or the
    one the pod already carries): the configuration it would load, read by the sidecar's own loader
    from its environment and its --config file, puts its policy in a mode that forwards card numbers
    unmasked (dry_run, passthrough, in any spelling the loader takes), or the webhook cannot read
    that configuration (a mode variable from valueFrom, envFrom, another --config or command)."""
    from sidecar.config import load  # the sidecar's loader: imported here, where it is used

    variables = mode_variables()
    alternatives = " or ".join(variables)
    config_file, problem = _run_config_file(container, injection, where)
    if problem:
        return problem
    if container.get("envFrom"):
        return (f"{where} takes variables from envFrom (a ConfigMap or Secret the webhook cannot read), which "
                f"could set {alternatives}: the webhook cannot tell whether the sidecar masks card numbers; "
                "remove envFrom")
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if "valueFrom" not in item:
            # Kubernetes gives a variable without value or valueFrom the empty string
            env[name] = str(item.get("value", ""))
        elif name in variables:
            return (f"{where} takes {name} from valueFrom (a ConfigMap, Secret or field the webhook cannot "
                    "read): the webhook cannot tell whether the sidecar masks card numbers; set "
                    f"{name} to a value or remove it")
        else:
            env.pop(name, None)  # the later entry wins; its value is unknown here, as for the loader's default
    try:
        policy = load(config_file or None, env=env).policy
    except ConfigError as exc:
        if exc.key == CONFIG_FILE:
            return (f"injection.sidecar_config_file: the webhook cannot read it ({exc.message}), so it cannot "
                    "tell which policy mode the sidecar starts in; PCI-scope pods are only admitted with "
                    "a sidecar known to enforce its policies")
        return (f"{where} gives the sidecar a configuration it refuses to start with ({exc}); PCI-scope pods "
                "are only admitted with the sidecar in enforce mode")
    except ValueError as exc:
        # a value the loader fails on rather than names (http://[ as an endpoint, in urlsplit): the
        # sidecar would not start either; not the webhook's bug, so no traceback
        return (f"{where} gives the sidecar a configuration it refuses to start with ({exc}, from the "
                "sidecar's config loader); PCI-scope pods are only admitted with the sidecar in enforce mode")
    if policy.enforcing:
        return None
    given = [f"{name}={env[name]}" for name in variables if name in env]
    source = f"{where} sets {' and '.join(given)}" if given else (
        f"injection.sidecar_config_file {config_file} sets [policy] mode or dry_run")
    change = f"remove {' and '.join(n for n in variables if n in env)}" if given else "set mode = \"enforce\" there"
    return (f"{source}, which forwards card numbers unmasked (the sidecar's policy.mode would be "
            f"{policy.mode}); PCI-scope pods are only admitted with the sidecar in enforce mode: {change}")


def apply_patch(document: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply this module's ``add``-only patch to a copy of ``document`` (``webhook inject``)."""
    result = json.loads(json.dumps(document))
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"unsupported patch operation {op.get('op')!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = result
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        value = json.loads(json.dumps(op["value"]))
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), value)
        else:
            target[last] = value
    return result
