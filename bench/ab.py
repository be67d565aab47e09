"""Same-run comparison of two builds of the sidecar, end to end: before and after a change.

Usage::

    python -m bench.ab BASE [--rounds 6] [--duration 6] [--modes policy] [--signals traces]
                            [--transports grpc,http]

``BASE`` is a git revision (checked out in a temporary worktree, its extensions built there,
the worktree removed afterwards) or the directory of a checkout whose extensions are built. Each
row (signal, transport, mode) runs flat out as ``bench.load`` runs it, against the base and
against this tree in turn: the same requests, a fresh sink and sidecar each time, the order
reversed every other round (base first, then this tree first, ...). It prints every round's CPU
µs an item of both, the ratio this tree / base of each round, their median and range.

Why: a row's figure moves 10-30 % between runs on a shared machine, more than most changes
are worth, and ``make bench`` runs one tree. Two neighbouring runs share the machine's state;
their ratio is the figure to report (``bench.rewrite_builds`` does the same for the rewriter
alone, in one process). An A/A run (``BASE`` = this tree) shows the ratios' spread here.
Only the sidecar's own modes (policy, keep-all, passthrough) run from a tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import load

REPO = load.REPO
#: the modes whose target is the sidecar of a tree
TREE_MODES = ("policy", "keep-all", "passthrough")


@dataclass
class Comparison:
    """One row measured against both trees, round by round (CPU µs an item flat out)."""

    signal: str
    transport: str
    mode: str
    base: list[float] = field(default_factory=list)
    new: list[float] = field(default_factory=list)
    steal_pct: float = 0.0

    @property
    def ratios(self) -> list[float]:
        """This tree / base, round by round (below 1: this tree takes less CPU)."""
        return [new / base for base, new in zip(self.base, self.new, strict=True) if base > 0]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 0.0


def order(round_index: int) -> tuple[str, str]:
    """Which tree runs first in a round: the base in even rounds, this tree in odd ones."""
    return ("base", "new") if round_index % 2 == 0 else ("new", "base")


def is_checkout(path: Path) -> bool:
    return (path / "sidecar" / "__main__.py").is_file() and (path / "policies").is_dir()


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A checkout of ``revision`` in a temporary git worktree, removed on leaving."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
                            capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        raise SystemExit(f"bench.ab: {revision!r} is neither a checkout nor a git revision of {REPO}")
    with tempfile.TemporaryDirectory(prefix="otlp-sidecar-ab-") as parent:
        path = Path(parent) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(path),
                        commit.stdout.strip()], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def build(tree: Path) -> None:
    """Compile ``tree``'s extensions in place (nothing to build where the twins run)."""
    if os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS"):
        return
    print(f"building the extensions of {tree} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def base_tree(spec: str) -> Iterator[Path]:
    """The base: the checkout at ``spec``, or a built worktree of the revision ``spec``."""
    path = Path(spec)
    if path.is_dir():
        if not is_checkout(path):
            raise SystemExit(f"bench.ab: {path} is not a checkout of otlp-sidecar")
        yield path.resolve()
        return
    with worktree(spec) as tree:
        build(tree)
        yield tree


def describe(tree: Path) -> str:
    """The commit of ``tree`` and whether its files differ from it."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{head}{' + changes' if dirty else ''}"


def compare(args: argparse.Namespace, trees: dict[str, Path]) -> list[Comparison]:
    from bench.corpus_requests import log_request, metric_request, trace_request

    builders = {"traces": trace_request, "logs": log_request, "metrics": metric_request}
    comparisons = []
    for signal in args.signals.split(","):
        bodies = [builders[signal](args.spans, seed=seed) for seed in range(7, 7 + args.requests)]
        for transport in args.transports.split(","):
            for mode in args.modes.split(","):
                row = Comparison(signal, transport, mode)
                for n in range(args.rounds):
                    for side in order(n):
                        print(f"measuring {signal} / {transport} / {mode} on {side} (round {n + 1} of "
                              f"{args.rounds}) ...", file=sys.stderr, flush=True)
                        measured = load.measure(transport, mode, bodies, args.spans, args, signal, rates=[],
                                                tree=trees[side])
                        getattr(row, side).append(measured.cpu_us_per_span)
                        row.steal_pct = max(row.steal_pct, measured.steal_pct)
                comparisons.append(row)
    return comparisons


def print_table(comparisons: list[Comparison], names: dict[str, str]) -> None:
    print(f"\nbase: {names['base']} · this tree: {names['new']} · CPU µs an item flat out, round by round; "
          "ratio = this tree / base in the same round (below 1: this tree takes less)")
    print("| signal | transport | mode | base | this tree | ratio by round | median ratio | range | steal % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in comparisons:
        ratios = c.ratios
        spread = f"{min(ratios):.3f} to {max(ratios):.3f}" if ratios else "-"
        print(f"| {c.signal} | {c.transport} | {c.mode} | {', '.join(f'{x:.2f}' for x in c.base)} | "
              f"{', '.join(f'{x:.2f}' for x in c.new)} | {', '.join(f'{r:.3f}' for r in ratios)} | "
              f"{c.median_ratio:.3f} | {spread} | {c.steal_pct:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="a git revision, or the directory of a built checkout")
    parser.add_argument("--rounds", type=int, default=6, help="runs of each row on each tree, in turn")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of flat-out load per run")
    parser.add_argument("--spans", type=int, default=512, help="items per request")
    parser.add_argument("--requests", type=int, default=64, help="different pre-built requests, sent in turn")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per generator")
    parser.add_argument("--transports", default="grpc,http")
    parser.add_argument("--modes", default="policy", help=f"comma-separated, of {', '.join(TREE_MODES)}")
    parser.add_argument("--signals", default="traces")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not set(args.modes.split(",")) <= set(TREE_MODES):
        parser.error(f"--modes: only the sidecar's own modes run from a tree ({', '.join(TREE_MODES)})")
    args.rates, args.latency_duration = [], 0.0  # flat out only: what bench.load's measure() reads
    with base_tree(args.base) as base:
        trees = {"base": base, "new": REPO}
        names = {side: f"{describe(tree)} ({tree})" for side, tree in trees.items()}
        comparisons = compare(args, trees)
    print_table(comparisons, names)
    load.RESULTS.mkdir(exist_ok=True)
    out = load.RESULTS / f"ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": load.machine(), "args": vars(args), "trees": names,
                               "rows": [{**asdict(c), "ratios": c.ratios, "median_ratio": c.median_ratio}
                                        for c in comparisons]}, indent=2))
    print(f"\nfigures: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
