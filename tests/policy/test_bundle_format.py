"""The bundle format and its signatures against the real ``opa`` (v1.22.4): what ``opa build`` and
``opa sign`` make loads and verifies here, what ``otlp-sidecar policy bundle build`` signs verifies
in ``opa``; an archive is untrusted input (traversal, links, bombs refused within bounds)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sidecar.policy.bundles.archive import BundleError, BundleLimits, read_archive, read_path
from sidecar.policy.bundles.bundle import check_disjoint, parse_bundle
from sidecar.policy.bundles.signing import VerificationConfig
from tests.bundles.helpers import Keys, build, opa, run_opa, split_set, tampered, whole_set
from tests.conftest import REPO

LIMITS = BundleLimits()


def load(path: Path, verification: VerificationConfig | None = None):
    return parse_bundle("b", str(path), read_path(str(path), LIMITS), verification)


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def test_opa_build_signed_bundle_loads_with_revision_roots_and_nested_data(tmp_path: Path, keys: Keys) -> None:
    out = build(whole_set(tmp_path / "set", "2026-12-04.1"), tmp_path / "b.tar.gz", "--signing-key",
                str(keys.rsa_private))
    bundle = load(out, VerificationConfig.from_file(str(keys.rsa_public), "RS256", "default"))
    assert bundle.revision == "2026-12-04.1" and bundle.roots == ("otlp_sidecar",) and bundle.signed
    assert "pci/pci.rego" in bundle.modules
    assert bundle.data["otlp_sidecar"]["config"]["pci"]["pan_action"] == "mask_pan"
    # the key id must match when one is configured
    with pytest.raises(BundleError, match="key id 'default'"):
        load(out, VerificationConfig.from_file(str(keys.rsa_public), "RS256", "ops-2026"))


@pytest.mark.parametrize("algorithm", ["ES256", "HS256", "PS256"])
def test_opa_sign_on_a_directory_verifies_here(tmp_path: Path, keys: Keys, algorithm: str) -> None:
    folder = split_set(tmp_path / "src")["sampling"]  # data.yaml only: hashed in OPA's canonical form
    (folder / "otlp_sidecar" / "config" / "sampling" / "data.yaml").write_text(
        "ratio: 0.25\nvip_users: [u-1, \"é\\u2028\\b\"]\nbig: 10000000000000000000001\nflag: true\n")
    if algorithm == "HS256":
        secret, public = keys.hmac_secret.read_text().strip(), str(keys.hmac_secret)
    elif algorithm == "ES256":
        secret, public = str(keys.ec_private), str(keys.ec_public)
    else:
        secret, public = str(keys.rsa_private), str(keys.rsa_public)
    run_opa("sign", "-b", ".", "--signing-key", secret, "--signing-alg", algorithm, "-o", ".", cwd=folder)
    bundle = load(folder, VerificationConfig.from_file(public, algorithm))
    assert bundle.data["otlp_sidecar"]["config"]["sampling"]["ratio"] == 0.25  # nested at its directory
    # one changed value after signing: refused
    data = folder / "otlp_sidecar" / "config" / "sampling" / "data.yaml"
    data.write_text(data.read_text().replace("0.25", "0.99"))
    with pytest.raises(BundleError, match="does not match its signed hash"):
        load(folder, VerificationConfig.from_file(public, algorithm))


def test_bundle_signed_here_verifies_in_opa(tmp_path: Path, keys: Keys) -> None:
    source = whole_set(tmp_path / "set", "ours-1")
    out = tmp_path / "ours.tar.gz"
    for algorithm, private, public in (("RS256", keys.rsa_private, keys.rsa_public),
                                       ("ES256", keys.ec_private, keys.ec_public)):
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "policy", "bundle", "build", str(source), "-o", str(out),
             "--signing-key", str(private), "--signing-alg", algorithm, "--key-id", "platform"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        run_opa("build", "-b", str(out), "--verification-key", str(public), "--verification-key-id", "platform",
                "--signing-alg", algorithm, "-o", str(tmp_path / "reverified.tar.gz"))
        assert load(out, VerificationConfig.from_file(str(public), algorithm, "platform")).revision == "ours-1"
    # opa refuses it with another key, and once tampered
    other = tmp_path / "other.pub.pem"
    other.write_bytes(Keys(tmp_path / "k2").rsa_public.read_bytes())
    bad = subprocess.run([opa(), "build", "-b", str(out), "--verification-key", str(keys.rsa_public),
                          "-o", str(tmp_path / "x.tar.gz")], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0  # ES256-signed, RS256 key
    changed = tmp_path / "changed.tar.gz"
    changed.write_bytes(tampered(out.read_bytes(), "data.json", b'"mask_pan"', b'"redact"'))
    bad = subprocess.run([opa(), "build", "-b", str(changed), "--verification-key", str(keys.ec_public),
                          "--signing-alg", "ES256", "--verification-key-id", "platform",
                          "-o", str(tmp_path / "x.tar.gz")], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "digest mismatch" in bad.stderr + bad.stdout
    with pytest.raises(BundleError, match=r"data\.json does not match"):
        load(changed, VerificationConfig.from_file(str(keys.ec_public), "ES256"))


def test_verify_cli_exit_codes(tmp_path: Path, keys: Keys) -> None:
    out = build(whole_set(tmp_path / "set", "v9"), tmp_path / "b.tar.gz", "--signing-key", str(keys.rsa_private))
    command = [sys.executable, "-m", "sidecar", "policy", "bundle", "verify", str(out), "--verification-key"]
    good = subprocess.run([*command, str(keys.rsa_public)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and json.loads(good.stdout)["revision"] == "v9"
    bad = subprocess.run([*command, str(keys.ec_public)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "does not fit algorithm RS256" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("members", "message"), [
    ([(member("../escape.rego"), b"package x")], "outside the bundle"),
    ([(member("/a/../../etc/x.rego"), b"package x")], "outside the bundle"),
    ([(member("link.rego", tarfile.SYMTYPE, "/etc/passwd"), b"")], "is a symlink"),
    ([(member("hard.rego", tarfile.LNKTYPE, "a.rego"), b"")], "is a hard link"),
    ([(member("fifo", tarfile.FIFOTYPE), b"")], "is a special file"),
    ([(member("x.rego"), b"package x"), (member("x.rego"), b"package y")], "appears twice"),
    ([(member("policy.wasm"), b"\0asm")], "Wasm"),
])
def test_hostile_archives_are_refused(members, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        read_archive(tar_gz(members), LIMITS)


def test_bombs_and_sizes_are_bounded() -> None:
    limits = BundleLimits(max_download=64 * 1024, max_size=1024 * 1024, max_files=50)
    bomb = tar_gz([(member("data.json"), b"{\"a\": \"" + b"0" * (8 * 1024 * 1024) + b"\"}")])
    assert len(bomb) < 64 * 1024  # 8 MiB in a few KiB
    with pytest.raises(BundleError, match="bundle_max_size"):
        read_archive(bomb, limits)
    raw = gzip.compress(b"\0" * 100)
    with pytest.raises(BundleError, match=r"not a valid (tar|gzip)|truncated"):
        read_archive(raw + b"garbage", limits)
    with pytest.raises(BundleError, match="more than 50 members"):
        read_archive(tar_gz([(member(f"d/{i}.txt"), b"") for i in range(60)]), limits)
    with pytest.raises(BundleError, match="bundle_max_download_size"):
        read_archive(b"\x1f\x8b" + b"\0" * (65 * 1024), limits)
    with pytest.raises(BundleError, match="not a valid gzip"):
        read_archive(b"this is not gzip", limits)


def test_yaml_alias_bomb_and_non_json_values_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    files = {"data.yaml": "\n".join(lines).encode()}
    with pytest.raises(BundleError, match="more than"):
        parse_bundle("b", "t", files, None)
    with pytest.raises(BundleError, match="not JSON"):
        parse_bundle("b", "t", {"data.yaml": b"when: 2026-12-04\n"}, None)


@pytest.mark.parametrize(("name", "text"), [
    ("data.json", b'{"a": [' + b"{}," * 1_000_000 + b"{}]}"),
    ("data.yaml", b"a:\n" + b"- {}\n" * 400_000),
], ids=["json", "yaml"])
def test_data_that_may_hold_too_many_values_is_refused_before_it_is_decoded(name: str, text: bytes) -> None:
    """15 MiB of `{"a":[{},{},...]}` took 528 MiB before it was refused, 2 MB of YAML `- {}`
    465 MiB and was accepted: the values are now bounded on the text, before decoding."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="more than the 250000 values"):
            parse_bundle("b", "t", {name: text}, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(text), f"{peak} bytes traced: the document was decoded"
    # a large document that stays within the bound is still read
    ok = parse_bundle("b", "t", {"data.json": json.dumps({"a": list(range(200_000))}).encode()}, None)
    assert len(ok.data["a"]) == 200_000


def test_roots_hold_every_package_and_data_path() -> None:
    manifest = json.dumps({"revision": "1", "roots": ["team/a"]}).encode()
    with pytest.raises(BundleError, match=r"package team\.b is outside the bundle's roots"):
        parse_bundle("b", "t", {".manifest": manifest, "p.rego": b"package team.b\nx := 1\n"}, None)
    with pytest.raises(BundleError, match="data at 'team/b' is outside"):
        parse_bundle("b", "t", {".manifest": manifest, "team/b/data.json": b"{\"k\": 1}"}, None)
    ok = parse_bundle("b", "t", {".manifest": manifest, "team/data.json": b"{\"a\": {\"k\": 1}}",
                                 "x/p.rego": b"package team.a.rules\nx := 1\n"}, None)
    assert ok.data == {"team": {"a": {"k": 1}}}
    other = parse_bundle("c", "t", {".manifest": json.dumps({"roots": ["team"]}).encode()}, None)
    with pytest.raises(BundleError, match="bundles 'b' and 'c' have overlapping roots"):
        check_disjoint([ok, other])


def test_tar_of_a_directory_with_dot_entries_and_unused_files(tmp_path: Path, keys: Keys) -> None:
    """`tar -C dir -czf b.tar.gz .` writes ./ entries; a README rides along unsigned and unused."""
    folder = whole_set(tmp_path / "set", "t-1")
    run_opa("sign", "-b", ".", "--signing-key", str(keys.rsa_private), "-o", ".", cwd=folder)
    (folder / "README.md").write_text("how to publish this bundle\n")
    out = tmp_path / "b.tar.gz"
    subprocess.run(["tar", "-C", str(folder), "-czf", str(out), "."], check=True, timeout=60)
    with tarfile.open(out) as archive:
        members = archive.getnames()
    assert "./" in members or "." in members
    bundle = load(out, VerificationConfig.from_file(str(keys.rsa_public), "RS256"))
    assert bundle.revision == "t-1" and "pci/pci.rego" in bundle.modules
    # a Rego file the signature does not list is refused: it would change decisions
    (folder / "extra.rego").write_text("package otlp_sidecar.extra\nx := 1\n")
    with pytest.raises(BundleError, match=r"extra\.rego is in the bundle but not in its signature"):
        load(folder, VerificationConfig.from_file(str(keys.rsa_public), "RS256"))


@pytest.mark.parametrize("algorithm", ["HS256", "PS256", "ES256"])
def test_resigned_here_verifies_in_opa(tmp_path: Path, keys: Keys, algorithm: str) -> None:
    """An `opa build` bundle re-signed with `otlp-sidecar policy bundle sign` passes
    `opa build --verification-key` (the HMAC secret given as opa takes it: the string)."""
    out = build(whole_set(tmp_path / "set", "rs-1"), tmp_path / "b.tar.gz")
    private, public = {
        "HS256": (keys.hmac_secret, keys.hmac_secret.read_text().strip()),
        "PS256": (keys.rsa_private, str(keys.rsa_public)),
        "ES256": (keys.ec_private, str(keys.ec_public)),
    }[algorithm]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "bundle", "sign", str(out), "--signing-key", str(private),
         "--signing-alg", algorithm], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    run_opa("build", "-b", str(out), "--verification-key", public, "--signing-alg", algorithm,
            "-o", str(tmp_path / "checked.tar.gz"))
    key_file = keys.hmac_secret if algorithm == "HS256" else Path(public)
    assert load(out, VerificationConfig.from_file(str(key_file), algorithm)).revision == "rs-1"
