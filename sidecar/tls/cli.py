"""``otlp-sidecar certs``: a development CA, server and client certificates (SPIFFE URI SANs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

_DEFAULT_SPIFFE = "spiffe://cluster.local/ns/default/sa/app"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="make a development CA, server and client certificates (never for production)",
        description=(
            "Write a development PKI for local runs, the demo and the tests: ca.crt/ca.key, "
            "server.crt/server.key (for --dns and --ip) and <name>.crt/<name>.key, a client "
            "certificate whose URI SAN is --spiffe-id. Keys are written with mode 0600. An "
            "existing ca.crt/ca.key in --out is reused, so repeated runs add clients of one CA."
        ),
    )
    parser.add_argument("--out", required=True, help="directory to write the files to")
    parser.add_argument(
        "--spiffe-id",
        default=_DEFAULT_SPIFFE,
        help=f"SPIFFE ID of the client certificate (default {_DEFAULT_SPIFFE})",
    )
    parser.add_argument(
        "--client-name",
        default="client",
        help="base name of the client files (default client)",
    )
    parser.add_argument(
        "--dns",
        action="append",
        default=None,
        help="DNS name of the server certificate (repeatable; default localhost)",
    )
    parser.add_argument(
        "--ip",
        action="append",
        default=None,
        help="IP address of the server certificate (repeatable; default 127.0.0.1 and ::1)",
    )
    parser.add_argument("--server-spiffe-id", default="", help="also put this SPIFFE ID in the server certificate")
    parser.add_argument("--days", type=float, default=90.0, help="validity of the leaf certificates (default 90)")
    parser.add_argument("--new-ca", action="store_true", help="make a new CA even if ca.crt/ca.key exist")
    parser.set_defaults(handler=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    import ipaddress
    from pathlib import Path

    from sidecar.tls.certs import DEFAULT_DNS_NAMES, DEFAULT_IPS, write_dev_pki

    dns = tuple(args.dns) if args.dns else DEFAULT_DNS_NAMES
    ips = tuple(args.ip) if args.ip else DEFAULT_IPS
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            print(f"otlp-sidecar certs: --ip {ip!r} is not an IP address", file=sys.stderr)
            return 2
    for name, value in (
        ("--spiffe-id", args.spiffe_id),
        ("--server-spiffe-id", args.server_spiffe_id),
    ):
        if value and (not value.startswith("spiffe://") or len(value) <= len("spiffe://")):
            print(
                f"otlp-sidecar certs: {name} {value!r} must look like spiffe://trust-domain/path",
                file=sys.stderr,
            )
            return 2
    if not args.days > 0:
        print("otlp-sidecar certs: --days must be positive", file=sys.stderr)
        return 2
    if not args.client_name or "/" in args.client_name or args.client_name in ("ca", "server"):
        print(
            f"otlp-sidecar certs: --client-name {args.client_name!r} must be a plain file name "
            "other than ca and server",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"otlp-sidecar certs: --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        files = write_dev_pki(
            out,
            spiffe_id=args.spiffe_id,
            dns_names=dns,
            ips=ips,
            server_spiffe_id=args.server_spiffe_id,
            client_name=args.client_name,
            days=args.days,
            reuse_ca=not args.new_ca,
        )
    except (OSError, ValueError) as exc:
        print(f"otlp-sidecar certs: cannot write to {out}: {exc}", file=sys.stderr)
        return 1
    print(f"{'reused' if files.ca_reused else 'new'} CA:  {files.ca_cert}  (key {files.ca_key})")
    print(f"server:   {files.server_cert}  (key {files.server_key})  for {', '.join(dns + ips)}")
    print(f"client:   {files.client_cert}  (key {files.client_key})  {args.spiffe_id}")
    print("development certificates only: never use them in production")
    return 0
