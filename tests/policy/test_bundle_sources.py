"""Bundle sources on the file system (a .tar.gz replaced, a directory laid out like a ConfigMap
mount), the polling delays, and a revision-only change that recompiles nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import prometheus_client

from sidecar.policy.bundles.fetch import HttpFetcher
from sidecar.policy.bundles.manager import BundleManager, BundleSource
from sidecar.policy.config import PolicyConfig
from tests.bundles.helpers import Keys, build, shipped_config, whole_set
from tests.policy.configmap_dir import ConfigMapDir
from tests.policy.conftest import sample_value


async def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def replace_file(target: Path, source: Path) -> None:
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


async def test_a_bundle_file_replaced_on_disk(make_service, tmp_path: Path, hash_key_file: Path) -> None:
    keys = Keys(tmp_path / "keys")
    one = build(whole_set(tmp_path / "v1", "v1"), tmp_path / "v1.tar.gz", "--signing-key", str(keys.rsa_private))
    config = shipped_config()
    config["sampling"]["vip_users"] = ["u-5"]
    two = build(whole_set(tmp_path / "v2", "v2", config=config), tmp_path / "v2.tar.gz",
                "--signing-key", str(keys.rsa_private))
    # v3: the same policies as v2 under a new revision
    three = build(whole_set(tmp_path / "v3", "v3", config=config), tmp_path / "v3.tar.gz",
                  "--signing-key", str(keys.rsa_private))
    live = tmp_path / "live.tar.gz"
    replace_file(live, one)
    service = await make_service(bundles=[f"set={live}"], hash_key_file=str(hash_key_file), reload_interval=0.05,
                                 bundle_verification_key_file=str(keys.rsa_public))
    registry = service.metrics.registry
    assert service.status()["bundles"][0]["revision"] == "v1"
    replace_file(live, two)
    await wait_for(lambda: service.status()["bundles"][0]["revision"] == "v2")
    version = service.version
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="ok") == 2
    replace_file(live, three)
    await wait_for(lambda: service.status()["bundles"][0]["revision"] == "v3")
    assert service.version == version  # same policies: nothing recompiled or swapped
    assert sample_value(registry, "otlp_sidecar_policy_reloads_total", result="ok") == 2
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    replace_file(live, tmp_path / "broken.tar.gz")
    await wait_for(lambda: "not a valid gzip" in service.status()["bundles"][0]["last_error"])
    await asyncio.sleep(0.3)  # refused once, not on every poll
    assert sample_value(registry, "otlp_sidecar_policy_bundle_polls_total", bundle="set", result="refused") == 1
    assert service.status()["bundles"][0]["revision"] == "v3" and service.version == version


async def test_a_bundle_directory_mounted_like_a_configmap(make_service, tmp_path: Path, hash_key_file) -> None:
    source = whole_set(tmp_path / "src", "dir-1")
    mount = ConfigMapDir(tmp_path / "mount")
    mount.publish(source)
    service = await make_service(bundles=[f"team={mount.root}"], hash_key_file=str(hash_key_file),
                                 reload_interval=0.05)
    assert service.status()["bundles"][0]["revision"] == "dir-1"

    def next_revision(version: Path) -> None:
        (version / ".manifest").write_text(json.dumps({"revision": "dir-2", "roots": ["otlp_sidecar"]}))
        data = json.loads((version / "data.json").read_text())
        data["otlp_sidecar"]["config"]["sampling"]["vip_users"] = ["u-8"]
        (version / "data.json").write_text(json.dumps(data))

    mount.publish(source, next_revision)
    await wait_for(lambda: service.status()["bundles"][0]["revision"] == "dir-2")

    def escape(version: Path) -> None:
        (version / "pci" / "pci.rego").unlink()
        (version / "pci" / "pci.rego").symlink_to("/etc/hostname")

    mount.publish(source, escape)
    await wait_for(lambda: "points outside the bundle directory" in service.status()["bundles"][0]["last_error"])
    assert service.status()["bundles"][0]["revision"] == "dir-2"


def test_polling_delays_are_jittered_and_back_off() -> None:
    config = PolicyConfig(bundles=["a=http://127.0.0.1:1/a"], bundle_polling_min_delay=10.0,
                          bundle_polling_max_delay=40.0)
    manager = BundleManager(config, prometheus_client.CollectorRegistry())
    source = manager.sources[0]
    assert isinstance(source, BundleSource) and isinstance(source.fetcher, HttpFetcher)
    delays = [manager._delay(source) for _ in range(200)]
    assert min(delays) >= 10.0 and max(delays) <= 40.0 and max(delays) - min(delays) > 15  # spread out
    backoff = []
    for failures in (1, 2, 3, 4, 10):
        source.failures = failures
        backoff.append(max(manager._delay(source) for _ in range(50)))
    assert backoff[0] <= 10.0 < backoff[1] <= 20.0 < backoff[2] <= 40.0 and backoff[-1] <= 40.0


async def test_redirects_are_followed_unless_a_token_is_sent(tmp_path: Path) -> None:
    from aiohttp import web

    from sidecar.policy.bundles.archive import BundleError, BundleLimits

    raw = build(whole_set(tmp_path / "set", "r-1"), tmp_path / "b.tar.gz").read_bytes()
    tokens: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/final")

    async def final(request: web.Request) -> web.Response:
        tokens.append(request.headers.get("Authorization", ""))
        return web.Response(body=raw, headers={"ETag": '"r-1"'})

    app = web.Application()
    app.router.add_get("/moved", moved)
    app.router.add_get("/final", final)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    token = tmp_path / "token"
    token.write_text("t0k3n")
    plain = HttpFetcher(f"http://127.0.0.1:{port}/moved", BundleLimits(), 5.0)
    with_token = HttpFetcher(f"http://127.0.0.1:{port}/moved", BundleLimits(), 5.0, token_file=str(token))
    try:
        fetched = await plain.fetch("")
        assert fetched.tag == '"r-1"' and fetched.read is not None and ".manifest" in fetched.read()
        try:
            await with_token.fetch("")
            raise AssertionError("followed a redirect with the token")
        except BundleError as exc:
            assert "redirected (HTTP 302)" in str(exc)
        assert tokens == [""]  # the token never left for the redirect's target
    finally:
        await plain.close()
        await with_token.close()
        await runner.cleanup()


async def test_an_unusable_verification_key_is_a_start_error(tmp_path: Path) -> None:
    import pytest

    from sidecar.configkit import ConfigError
    from sidecar.identity import PodIdentity
    from sidecar.policy.service import PolicyService

    keys = Keys(tmp_path / "keys")
    for key_file, algorithm, message in (
        (tmp_path / "missing.pem", "RS256", "cannot read the bundle verification key"),
        (keys.ec_public, "RS256", "does not fit algorithm RS256"),
        (keys.rsa_private, "RS256", "not a PEM public key"),
    ):
        config = PolicyConfig(bundles=["a=http://127.0.0.1:1/a"], bundle_verification_key_file=str(key_file),
                              bundle_verification_algorithm=algorithm)
        with pytest.raises(ConfigError, match=message):
            PolicyService(config, PodIdentity(), prometheus_client.CollectorRegistry())


def test_stale_staged_directories_are_swept(tmp_path: Path) -> None:
    from sidecar.policy.bundles.bundle import STAGE_PREFIX, sweep_stale_stages

    dead = tmp_path / f"{STAGE_PREFIX}999999999-abc"  # no such process
    ours = tmp_path / f"{STAGE_PREFIX}{os.getpid()}-old"  # an earlier container with our pid
    other = tmp_path / f"{STAGE_PREFIX}{os.getppid()}-live"  # a live process's
    unrelated = tmp_path / "something-else"
    for folder in (dead, ours, other, unrelated):
        folder.mkdir()
    assert sweep_stale_stages(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, unrelated.name])


async def test_a_failed_start_leaves_no_staged_directory(make_service, tmp_path: Path, hash_key_file) -> None:
    import tempfile

    import pytest

    from sidecar.configkit import ConfigError
    from sidecar.policy.bundles.bundle import STAGE_PREFIX

    folder = whole_set(tmp_path / "set", "bad-1")
    pci = folder / "pci" / "pci_test.rego"
    pci.write_text(pci.read_text() + "\ntest_always_fails if { false }\n")
    mine = f"{STAGE_PREFIX}{os.getpid()}-"
    before = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}
    with pytest.raises(ConfigError, match=r"policy\.bundles: bundles set: .*policy tests fail"):
        await make_service(bundles=[f"set={folder}"], hash_key_file=str(hash_key_file))
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}
    assert after <= before


async def test_a_rotated_ca_secret_is_trusted_without_a_restart(tmp_path: Path) -> None:
    """The bundle server's certificate moves to a new CA and the CA Secret (mounted as the kubelet
    does: an atomic ``..data`` swap) follows: the next poll trusts the new CA. An unreadable CA file
    is a clear error, not a traceback."""
    import ssl

    from aiohttp import web

    from sidecar.policy.bundles.archive import BundleError, BundleLimits
    from tests.tls.pki import make_pki

    raw = build(whole_set(tmp_path / "set", "r-1"), tmp_path / "b.tar.gz").read_bytes()
    old, new = make_pki(tmp_path, "old"), make_pki(tmp_path, "new")

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=raw, headers={"ETag": '"r-1"'})

    async def start(pki, port: int = 0) -> tuple[web.AppRunner, int]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        app = web.Application()
        app.router.add_get("/set.tar.gz", serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    secret = ConfigMapDir(tmp_path / "bundle-ca")
    (tmp_path / "ca-old").mkdir()
    shutil.copy(old.ca_cert, tmp_path / "ca-old" / "ca.crt")
    secret.publish(tmp_path / "ca-old")
    runner, port = await start(old)
    url = f"https://127.0.0.1:{port}/set.tar.gz"
    fetcher = HttpFetcher(url, BundleLimits(), 5.0, ca_file=str(secret.root / "ca.crt"))
    try:
        assert (await fetcher.fetch("")).tag == '"r-1"'
        await runner.cleanup()
        runner, _ = await start(new, port)  # the server's certificate now comes from the new CA
        try:
            await fetcher.fetch("")
            raise AssertionError("a certificate of an untrusted CA was accepted")
        except BundleError as exc:
            assert "certificate verify failed" in str(exc)
        (tmp_path / "ca-new").mkdir()
        shutil.copy(new.ca_cert, tmp_path / "ca-new" / "ca.crt")
        secret.publish(tmp_path / "ca-new")  # the Secret rotated
        fetched = await fetcher.fetch("")
        assert fetched.tag == '"r-1"' and fetched.read is not None
    finally:
        await fetcher.close()
        await runner.cleanup()

    missing = HttpFetcher(url, BundleLimits(), 5.0, ca_file=str(tmp_path / "nowhere" / "ca.crt"))
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    unusable = HttpFetcher(url, BundleLimits(), 5.0, ca_file=str(garbage))
    for fetcher, message in ((missing, "cannot read policy.bundle_ca_file"),
                             (unusable, "cannot use policy.bundle_ca_file")):
        try:
            await fetcher.fetch("")
            raise AssertionError("fetched without a usable CA")
        except BundleError as exc:
            assert message in str(exc) and str(tmp_path) in str(exc)
        finally:
            await fetcher.close()
