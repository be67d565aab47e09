"""``otlp-sidecar policy bundle build | sign | verify``: make and check OPA bundles.

``build`` writes the ``.tar.gz`` layout ``opa build`` writes (``.manifest``, the data files and
the ``.rego`` files), signed with ``--signing-key`` as ``opa build --signing-key`` does; the
result verifies in ``opa run --verification-key``. ``verify`` checks a bundle the way the
sidecar will (signature, manifest roots, data) and prints its revision.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

from sidecar.policy.bundles.archive import (
    ALGORITHMS,
    MANIFEST,
    SIGNATURES,
    BundleError,
    BundleLimits,
    read_path,
    used,
)

# bundle.py (yaml) and signing.py (cryptography) are imported by the commands that use them: every
# `otlp-sidecar run` builds this parser, and those imports alone cost it 6-8 MiB resident


def register(actions: Any) -> None:
    bundle = actions.add_parser("bundle", help="build, sign and verify OPA bundles (.tar.gz)")
    commands = bundle.add_subparsers(dest="bundle_command", metavar="ACTION")

    build = commands.add_parser("build", help="make a bundle from a directory (like opa build -b DIR)")
    build.add_argument("dir", help="bundle directory: .rego files, data.json / data.yaml, optional .manifest")
    build.add_argument("-o", "--output", default="bundle.tar.gz")
    build.add_argument("-r", "--revision", help="revision written to .manifest")
    build.add_argument("--root", action="append", dest="roots", help="a root of the manifest (repeatable)")
    _signing(build)
    build.set_defaults(handler=cmd_build)

    sign = commands.add_parser("sign", help="(re)sign a bundle file in place or to -o")
    sign.add_argument("file")
    sign.add_argument("-o", "--output")
    _signing(sign, required=True)
    sign.set_defaults(handler=cmd_sign)

    verify = commands.add_parser("verify", help="check a bundle as the sidecar does; print its revision")
    verify.add_argument("bundle", help=".tar.gz file or bundle directory")
    verify.add_argument("--verification-key", help="PEM public key (RS/PS/ES) or file with the HMAC secret")
    verify.add_argument("--verification-alg", default="RS256", choices=ALGORITHMS)
    verify.add_argument("--key-id", default="")
    verify.add_argument("--scope", default="")
    verify.set_defaults(handler=cmd_verify)
    bundle.set_defaults(handler=lambda _args: (bundle.print_help(sys.stderr), 2)[1])


def _signing(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--signing-key", required=required,
                        help="PEM private key (RS/PS/ES) or file with the HMAC secret (HS)")
    parser.add_argument("--signing-alg", default="RS256", choices=ALGORITHMS)
    parser.add_argument("--key-id", default="", help="key id written to the signature (kid)")
    parser.add_argument("--scope", default="", help="scope written to the signature")


def write_archive(files: dict[str, bytes]) -> bytes:
    """A ``.tar.gz`` of ``files`` as opa build lays it out (members under ``/``, fixed times)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files, key=lambda n: (n in (MANIFEST, SIGNATURES), n)):
            info = tarfile.TarInfo("/" + name)
            info.size, info.mode, info.mtime = len(files[name]), 0o600, 0
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def _sign_into(files: dict[str, bytes], args: argparse.Namespace) -> None:
    files.pop(SIGNATURES, None)
    if args.signing_key:
        key = Path(args.signing_key).read_bytes()
        from sidecar.policy.bundles.signing import sign_files

        files[SIGNATURES] = sign_files(files, key, args.signing_alg, args.key_id, args.scope)


def _fail(message: str) -> int:
    print(f"otlp-sidecar: policy bundle: {message}", file=sys.stderr)
    return 1


def cmd_build(args: argparse.Namespace) -> int:
    from sidecar.policy.bundles.bundle import parse_bundle

    limits = BundleLimits(max_download=1 << 30, max_size=1 << 30, max_files=100_000)
    try:
        files = {name: raw for name, raw in read_path(args.dir, limits).items() if used(name)}
        manifest: dict[str, Any] = json.loads(files[MANIFEST]) if MANIFEST in files else {}
        if args.revision is not None:
            manifest["revision"] = args.revision
        if args.roots:
            manifest["roots"] = args.roots
        manifest.setdefault("revision", "")
        manifest.setdefault("roots", [""])
        files[MANIFEST] = json.dumps(manifest, separators=(",", ":")).encode()
        parse_bundle("build", args.dir, files, None)  # the manifest's roots hold every package and data path
        _sign_into(files, args)
        Path(args.output).write_bytes(write_archive(files))
    except (BundleError, OSError, ValueError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.output}: revision {manifest['revision']!r}, roots {manifest['roots']}, "
          f"{len(files)} files{', signed ' + args.signing_alg if args.signing_key else ''}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    limits = BundleLimits(max_download=1 << 30, max_size=1 << 30, max_files=100_000)
    try:
        files = {name: raw for name, raw in read_path(args.file, limits).items() if used(name)}
        _sign_into(files, args)
        Path(args.output or args.file).write_bytes(write_archive(files))
    except (BundleError, OSError) as exc:
        return _fail(str(exc))
    print(f"signed {args.output or args.file} with {args.signing_alg}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from sidecar.policy.bundles.bundle import parse_bundle
    from sidecar.policy.bundles.signing import VerificationConfig

    try:
        verification = None
        if args.verification_key:
            verification = VerificationConfig.from_file(
                args.verification_key, args.verification_alg, args.key_id, args.scope)
        files = read_path(args.bundle, BundleLimits())
        bundle = parse_bundle("bundle", args.bundle, files, verification)
    except BundleError as exc:
        return _fail(str(exc))
    print(json.dumps({
        "revision": bundle.revision, "roots": list(bundle.roots), "signed": bundle.signed,
        "policies": sorted(bundle.modules), "data_paths": sorted(bundle.data), "digest": bundle.digest[:16],
    }, indent=2))
    return 0
