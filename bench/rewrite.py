"""Rewriter throughput: spans/s for the Cython rewriter, the pure-Python twin and a naive baseline.

Usage: ``python bench/rewrite.py [--spans 512] [--seconds 2] [--plans default,shipped]``. One
core, 512-span trace requests built from the card-number corpus, two plans:

- ``default``: PAN detection in every string, four key rules, a tenant stamp, 10 % sampling
  with keep rules (``bench.corpus_requests.DEFAULT_PLAN``);
- ``shipped``: the plan the bundled policies (``policies/``) give, asked of the real policy
  engine: ~180 PCI key rules, PAN detection, tenant stamp, 10 % sampling.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.naive_rewrite import naive_rewrite
from bench.corpus_requests import DEFAULT_PLAN, shipped_plan, trace_request
from sidecar.signals import Signal


def measure(fn, data: bytes, spans: int, seconds: float) -> float:
    """Spans per second of ``fn(data)``: the best of repeated rounds over about ``seconds``
    (like ``timeit``, the minimum filters out time lost to other processes on the machine)."""
    fn(data)  # warm up (plan compilation, caches)
    start = time.perf_counter()
    once = _round(fn, data, 1)
    per_round = max(1, int(0.05 / once))
    best = once
    while time.perf_counter() - start < seconds:
        best = min(best, _round(fn, data, per_round))
    return spans / best


def _round(fn, data: bytes, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn(data)
    return (time.perf_counter() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--plans", default="default,shipped", help="comma-separated: default, shipped")
    args = ap.parse_args()
    data = trace_request(args.spans)
    try:
        c = importlib.import_module("sidecar._ext.rewrite")
    except ImportError:
        c = None
        print("sidecar._ext.rewrite is not built: python setup.py build_ext --inplace")
    py = importlib.import_module("sidecar.rewrite._py")
    print(f"{len(data)} bytes, {args.spans} spans a request ({len(data) / args.spans:.0f} B/span)")
    print(f"{'plan':<10}{'implementation':<16}{'spans/s':>14}{'vs naive':>10}")
    for name in args.plans.split(","):
        plan = DEFAULT_PLAN if name == "default" else shipped_plan(data)
        plans = [plan]
        rows = []
        if c is not None:
            rows.append(("cython", measure(lambda d, plans=plans: c.rewrite(Signal.TRACES, d, plans), data,
                                           args.spans, args.seconds)))
        rows.append(("twin", measure(lambda d, plans=plans: py.rewrite(Signal.TRACES, d, plans), data,
                                     args.spans, args.seconds)))
        rows.append(("naive", measure(lambda d, plan=plan: naive_rewrite(d, plan), data, args.spans,
                                      args.seconds)))
        naive = rows[-1][1]
        for implementation, rate in rows:
            print(f"{name:<10}{implementation:<16}{rate:>14,.0f}{rate / naive:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
