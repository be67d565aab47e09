"""bench.ab: two trees measured in turn, row by row, and their ratio round by round."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.ab import Comparison, base_tree, order, worktree
from tests.conftest import REPO


def test_the_trees_take_turns_going_first() -> None:
    assert [order(n) for n in range(4)] == [("base", "new"), ("new", "base"), ("base", "new"), ("new", "base")]


def test_the_ratio_is_this_tree_over_base_in_the_same_round() -> None:
    row = Comparison("traces", "grpc", "policy", base=[1.0, 0.5, 0.8], new=[0.9, 0.6, 0.4])
    assert row.ratios == pytest.approx([0.9, 1.2, 0.5])
    assert row.median_ratio == pytest.approx(0.9)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout: no revision to check out")
def test_a_revision_is_checked_out_beside_and_removed_after() -> None:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with worktree("HEAD") as tree:
        assert (tree / "sidecar" / "__main__.py").is_file() and (tree / "policies").is_dir()
        checked_out = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        assert checked_out == head
    assert not tree.exists()
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert str(tree) not in listed


def test_neither_a_checkout_nor_a_revision_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit, match="not a checkout"), base_tree(str(tmp_path)):
        pass
    with pytest.raises(SystemExit, match="neither a checkout nor a git revision"), base_tree("no-such-revision-x"):
        pass


def test_an_a_a_run_measures_both_trees_every_round() -> None:
    """This tree against itself, given as a directory: every round measures both, the ratios near 1."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ab", str(REPO), "--rounds", "2", "--duration", "0.5", "--generators", "1",
         "--concurrency", "2", "--transports", "http", "--modes", "policy"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("on base (round") == 2 and proc.stderr.count("on new (round") == 2
    results = REPO / proc.stdout.rsplit("figures: ", 1)[1].strip()
    data = json.loads(results.read_text())
    results.unlink()
    (row,) = data["rows"]
    assert (row["signal"], row["transport"], row["mode"]) == ("traces", "http", "policy")
    assert len(row["base"]) == len(row["new"]) == len(row["ratios"]) == 2
    assert all(figure > 0 for figure in row["base"] + row["new"])
    # the same code: a ratio far from 1 would be the harness measuring something else
    assert all(0.25 < ratio < 4 for ratio in row["ratios"]), row
    assert "| traces | http | policy |" in proc.stdout


def test_only_the_sidecars_own_modes_run_from_a_tree() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.ab", str(REPO), "--modes", "naive"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "only the sidecar's own modes" in proc.stderr
