"""``otlp-sidecar webhook serve|inject|config-docs``: the injection webhook's commands."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.webhook.config import WebhookConfig


def register(subparsers: Any) -> None:
    """Add ``webhook`` and its subcommands to the main parser."""
    parser = subparsers.add_parser(
        "webhook",
        help="the Kubernetes injection webhook",
        description="Mutating admission webhook that injects the otlp-sidecar into pods.",
    )
    commands = parser.add_subparsers(dest="webhook_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: _usage(parser))

    serve = commands.add_parser("serve", help="serve AdmissionReview v1 over HTTPS")
    serve.add_argument("--config", help="webhook settings (TOML), as the Helm chart renders them")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_serve)

    inject = commands.add_parser(
        "inject",
        help="print a pod (JSON) as the webhook would inject it, without a cluster",
    )
    inject.add_argument("pod", help="pod JSON file, or - for stdin")
    inject.add_argument("--config", help="webhook settings (TOML)")
    inject.add_argument("--namespace", default=None,
                        help="namespace the pod is created in (default: its metadata.namespace, else default)")
    inject.add_argument(
        "--scope",
        default="namespace",
        choices=["pod", "namespace", "pci"],
        help="which webhook entry is asked: pod (annotation opt-in), namespace (labelled "
        "namespace, opt-out) or pci (PCI-scope namespace) (default: namespace)",
    )
    inject.set_defaults(handler=_inject)

    docs = commands.add_parser("config-docs", help="print the reference of the webhook's settings")
    docs.set_defaults(handler=_config_docs)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(path: str | None) -> WebhookConfig | None:
    from sidecar.configkit import ConfigError
    from sidecar.webhook.config import load_webhook_config

    try:
        return load_webhook_config(path)
    except ConfigError as exc:
        print(f"otlp-sidecar webhook: configuration error: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import ssl

    from sidecar.configkit import ConfigError
    from sidecar.webhook.server import serve

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from sidecar.logsetup import limit_client_paced_warnings

    limit_client_paced_warnings()
    config = _load(args.config)
    if config is None:
        return 2
    try:
        asyncio.run(serve(config))
    except (OSError, ssl.SSLError, ConfigError) as exc:
        print(f"otlp-sidecar webhook: cannot serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _inject(args: argparse.Namespace) -> int:
    import json

    from sidecar.masked_text import client_message
    from sidecar.webhook.inject import InvalidPod, Refused, Scope, apply_patch, decide

    config = _load(args.config)
    if config is None:
        return 2
    try:
        if args.pod == "-":
            text = sys.stdin.read()
        else:
            with open(args.pod, encoding="utf-8") as handle:
                text = handle.read()
        pod = json.loads(text)
    except OSError as exc:
        print(f"otlp-sidecar webhook inject: cannot read {args.pod}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"otlp-sidecar webhook inject: {args.pod} is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        decision = decide(pod, args.namespace or _namespace_of(pod), Scope(args.scope), config)
    except (InvalidPod, Refused) as exc:
        print(f"otlp-sidecar webhook inject: {exc}", file=sys.stderr)
        return 1
    print(f"otlp-sidecar webhook inject: {decision.reason}", file=sys.stderr)
    for warning in decision.warnings:  # as kubectl prints an admission warning
        print(f"Warning: {client_message(warning)}", file=sys.stderr)
    result = apply_patch(pod, decision.patch) if decision.inject else pod
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _namespace_of(pod: object) -> str:
    """The namespace a manifest names, as the API server would create it in (else ``default``)."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) and namespace else "default"


def _config_docs(args: argparse.Namespace) -> int:
    from sidecar.webhook.config import render_docs

    sys.stdout.write(render_docs())
    return 0
