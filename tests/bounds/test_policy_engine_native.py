"""regopy beside upb: no native memory kept per evaluation (issue 14, the root cause).

``librego_shared.so`` brings its own ``operator new``/``delete``; when libstdc++ is loaded before
it (``google._upb._message`` links libstdc++), the two allocators mix and about 65 KiB per
evaluation is never given back. ``sidecar.policy.embedded`` loads libstdc++ globally before
regopy. Each case runs in a fresh Python process (the order of loading is the point), imports upb
first as the sidecar does, and evaluates the shipped set for new resources.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

MiB = 1024 * 1024

#: evaluate ``decisions`` for new resources; print RSS (bytes) after a warm-up and after more
CHILD = """
import json, sys
import google._upb._message  # noqa: F401  - loaded first, as in the sidecar
if sys.argv[1] == "without-the-fix":
    import regopy  # noqa: F401  - regopy loaded straight after upb, bypassing sidecar.policy.embedded
from sidecar.policy import embedded
from sidecar.policy.source import BUNDLED_DIR, read_policy_dir

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

policy = embedded.CompiledPolicy(read_policy_dir(str(BUNDLED_DIR)), "otlp_sidecar/main", with_tests=False)
def evaluate(count, prefix):
    for index in range(count):
        request = {"signal": "traces", "resource": {"service.name": f"{prefix}-{index}"},
                   "pod": {"namespace": "shop", "name": "api-0"}, "peer": {"address": "10.0.0.1", "tls": False},
                   "transport": "grpc"}
        assert policy.query("decisions", request)
evaluate(200, "warm")
warm = rss()
evaluate(800, "new")
print(json.dumps({"shared": embedded.LIBSTDCXX_SHARED, "warm": warm, "after": rss()}))
"""


def run_child(variant: str) -> dict[str, int]:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, variant], cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_800_evaluations_beside_upb_keep_no_memory() -> None:
    figures = run_child("sidecar")
    grown = figures["after"] - figures["warm"]
    print(f"800 evaluations beside upb: RSS +{grown / MiB:.1f} MiB")
    assert figures["shared"] is True
    assert grown < 6 * MiB, f"RSS grew {grown / MiB:.1f} MiB over 800 evaluations"


def test_without_the_fix_the_same_evaluations_keep_memory() -> None:
    """The control: regopy loaded after upb without sidecar.policy.embedded's fix keeps memory.

    If this starts failing, regopy no longer mixes allocators and the fix may be dropped."""
    figures = run_child("without-the-fix")
    grown = figures["after"] - figures["warm"]
    print(f"800 evaluations beside upb, without the fix: RSS +{grown / MiB:.1f} MiB")
    assert figures["shared"] is False
    assert grown > 20 * MiB, f"RSS grew only {grown / MiB:.1f} MiB: regopy no longer mixes allocators?"
