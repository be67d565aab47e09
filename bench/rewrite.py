"""Rewriter throughput: items/s for the Cython rewriter, the pure-Python twin and a naive baseline.

Usage: ``python bench/rewrite.py [--spans 512] [--requests 8] [--seconds 2] [--plans default,shipped]
[--signals traces,logs,metrics]``.
One core, eight different 512-item requests built from the card-number corpus, rewritten
in turn as the end-to-end benchmark sends them: traces (512 spans), logs (512 log records with
message bodies to scan, an eighth of them structured maps) and metrics (512 data points of
gauges, sums and histograms with exemplars, as an SDK's periodic reader sends them). The naive
baseline (``bench/baselines/naive_rewrite.py``) does the same job for each signal. It prints
the best round's rate and the median round's: on a shared machine the best catches the moments
the core ran at full speed (up to twice the median here), while a running sidecar sees the
median. Two plans:

- ``default``: PAN detection in every string, four key rules, a tenant stamp, 10 % sampling
  with keep rules (``bench.corpus_requests.DEFAULT_PLAN``);
- ``shipped``: the plan the bundled policies (``policies/``) give, asked of the real policy
  engine: ~180 PCI key rules, PAN detection, tenant stamp, 10 % sampling.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.naive_rewrite import naive_rewrite, naive_rewrite_logs, naive_rewrite_metrics
from bench.corpus_requests import (
    DEFAULT_PLAN,
    distinct_keys_trace_request,
    log_request,
    metric_request,
    shipped_plan,
    shipped_plan_for,
    trace_request,
)
from sidecar.signals import Signal


def measure(fn, requests: list[bytes], spans: int, seconds: float) -> tuple[float, float]:
    """Spans per second of ``fn`` over ``requests`` in turn, over repeated rounds for about
    ``seconds``: (the best round's, the median round's). The best, like ``timeit``'s minimum,
    filters out time lost to other processes; the median is what a long run gets."""
    for data in requests:
        fn(data)  # warm up (plan compilation, caches)
    start = time.perf_counter()
    once = _round(fn, requests, 1)
    per_round = max(1, int(0.05 / once))
    rounds = [once]
    while time.perf_counter() - start < seconds:
        rounds.append(_round(fn, requests, per_round))
    return spans / min(rounds), spans / statistics.median(rounds)


def _round(fn, requests: list[bytes], n: int) -> float:
    """Seconds per request, over ``n`` passes through ``requests``."""
    t = time.perf_counter()
    for _ in range(n):
        for data in requests:
            fn(data)
    return (time.perf_counter() - t) / (n * len(requests))


# ---- log and metric requests (as the SDKs send them), built like the trace requests ----

BUILDERS = {"traces": (Signal.TRACES, trace_request, naive_rewrite),
            "logs": (Signal.LOGS, log_request, naive_rewrite_logs),
            "metrics": (Signal.METRICS, metric_request, naive_rewrite_metrics)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=512, help="items per request")
    ap.add_argument("--requests", type=int, default=8, help="different requests, rewritten in turn")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--plans", default="default,shipped", help="comma-separated: default, shipped")
    ap.add_argument("--signals", default="traces", help="comma-separated: traces, logs, metrics")
    ap.add_argument("--distinct-keys", type=int, default=0, metavar="N",
                    help="traces only: spans of 8 attributes drawn from N distinct keys, without sampling "
                         "(the key rules' cost as an app's keys grow; 0: the usual requests)")
    args = ap.parse_args()
    try:
        c = importlib.import_module("sidecar._ext.rewrite")
    except ImportError:
        c = None
        print("sidecar._ext.rewrite is not built: python setup.py build_ext --inplace")
    py = importlib.import_module("sidecar.rewrite._py")
    print(f"{'signal':<9}{'plan':<10}{'implementation':<16}{'best items/s':>14}{'median':>14}"
          f"{'vs naive':>10}{'B/item':>8}")
    for signal_name in args.signals.split(","):
        signal, build, naive_fn = BUILDERS[signal_name]
        if args.distinct_keys:
            if signal is not Signal.TRACES:
                ap.error("--distinct-keys is for traces")
            build = functools.partial(distinct_keys_trace_request, keys=args.distinct_keys)
        requests = [build(args.spans, seed=seed) for seed in range(7, 7 + args.requests)]
        data = requests[0]
        per_item = len(data) / args.spans
        for name in args.plans.split(","):
            plan = DEFAULT_PLAN if name == "default" else (
                shipped_plan(data) if signal is Signal.TRACES else shipped_plan_for(signal, data))
            if args.distinct_keys:  # every span kept: each key is matched
                plan = dataclasses.replace(plan, sampling=None)
            plans = [plan]
            rows = []
            if c is not None:
                rows.append(("cython", measure(lambda d, s=signal, plans=plans: c.rewrite(s, d, plans),
                                               requests, args.spans, args.seconds)))
            rows.append(("twin", measure(lambda d, s=signal, plans=plans: py.rewrite(s, d, plans),
                                         requests, args.spans, args.seconds)))
            rows.append(("naive", measure(lambda d, plan=plan, fn=naive_fn: fn(d, plan), requests,
                                          args.spans, args.seconds)))
            naive = rows[-1][1][1]
            for implementation, (best, median) in rows:
                ratio = f"{median / naive:>9.1f}x"
                print(f"{signal_name:<9}{name:<10}{implementation:<16}{best:>14,.0f}{median:>14,.0f}"
                      f"{ratio}{per_item:>8.0f}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
