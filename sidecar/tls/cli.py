"""``otlp-sidecar certs``: a development CA, server and client certificates (SPIFFE URI SANs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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
            "existing ca.crt/ca.key in --out is reused (unless --new-ca): a run with --client-name "
            "NAME then writes only NAME.crt/NAME.key, so repeated runs add clients of one CA; a run "
            "without --client-name re-issues server.crt/server.key and client.crt/client.key."
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
        default=None,
        help="base name of the client files (default client); with an existing CA in --out, "
        "only this client is written",
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
    """Write the whole development PKI, or with --client-name and an existing CA only that client."""
    from sidecar.tls.certs import DEFAULT_DNS_NAMES, DEFAULT_IPS, has_dev_ca

    dns = tuple(args.dns) if args.dns else DEFAULT_DNS_NAMES
    ips = tuple(args.ip) if args.ip else DEFAULT_IPS
    out = Path(args.out)
    error = _argument_error(args, ips) or _out_error(out)
    adds_client = args.client_name is not None and not args.new_ca and has_dev_ca(out)
    if not error and adds_client and (args.dns or args.ip or args.server_spiffe_id):
        error = (
            f"--client-name adds a client to the CA in {out} and leaves server.crt as it is; "
            "--dns, --ip and --server-spiffe-id need a run without --client-name"
        )
    if error:
        print(f"otlp-sidecar certs: {error}", file=sys.stderr)
        return 2
    try:
        if adds_client:
            _add_client(args, out)
        else:
            _write_all(args, out, dns, ips)
    except (OSError, ValueError) as exc:
        print(f"otlp-sidecar certs: cannot write to {out}: {exc}", file=sys.stderr)
        return 1
    print("development certificates only: never use them in production")
    return 0


def _argument_error(args: argparse.Namespace, ips: tuple[str, ...]) -> str | None:
    """What is wrong with the arguments, or None."""
    import ipaddress

    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return f"--ip {ip!r} is not an IP address"
    for name, value in (
        ("--spiffe-id", args.spiffe_id),
        ("--server-spiffe-id", args.server_spiffe_id),
    ):
        if value and (not value.startswith("spiffe://") or len(value) <= len("spiffe://")):
            return f"{name} {value!r} must look like spiffe://trust-domain/path"
    if not args.days > 0:
        return "--days must be positive"
    name = args.client_name
    if name is not None and (not name or "/" in name or name in ("ca", "server")):
        return f"--client-name {name!r} must be a plain file name other than ca and server"
    return None


def _out_error(out: Path) -> str | None:
    """Why ``out`` cannot be the output directory, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    return None


def _add_client(args: argparse.Namespace, out: Path) -> None:
    """Issue only the named client from the CA in ``out``."""
    from sidecar.tls.certs import CA_CERT, CA_KEY, add_dev_client

    cert, key = add_dev_client(out, args.client_name, spiffe_id=args.spiffe_id, days=args.days)
    print(f"reused CA:  {out / CA_CERT}  (key {out / CA_KEY})")
    print(f"client:   {cert}  (key {key})  {args.spiffe_id}")


def _write_all(args: argparse.Namespace, out: Path, dns: tuple[str, ...], ips: tuple[str, ...]) -> None:
    """Write the CA (or reuse it), the server and the client."""
    from sidecar.tls.certs import write_dev_pki

    files = write_dev_pki(
        out,
        spiffe_id=args.spiffe_id,
        dns_names=dns,
        ips=ips,
        server_spiffe_id=args.server_spiffe_id,
        client_name=args.client_name or "client",
        days=args.days,
        reuse_ca=not args.new_ca,
    )
    print(f"{'reused' if files.ca_reused else 'new'} CA:  {files.ca_cert}  (key {files.ca_key})")
    print(f"server:   {files.server_cert}  (key {files.server_key})  for {', '.join(dns + ips)}")
    print(f"client:   {files.client_cert}  (key {files.client_key})  {args.spiffe_id}")
