"""Fuzz the rewriter: mutated OTLP requests must give MalformedRequest or a result, never a crash,
and the Cython module must answer exactly like the pure-Python twin.

Hypothesis drives it (atheris is not needed): valid requests of the three signals and random
plans from tests/rewrite/strategies.py, then byte mutations (replace, insert, delete, truncate,
splice). A crash of the C code kills the process, which is the failure signal for a long run.

Usage: ``python bench/fuzz_rewrite.py [--examples 20000] [--seed N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from sidecar._ext import rewrite as c
from sidecar.rewrite import MalformedRequest
from sidecar.rewrite import _py as py
from sidecar.signals import Signal
from tests.rewrite.strategies import plans, requests_by_signal

mutations = st.lists(st.tuples(st.sampled_from(["replace", "insert", "delete", "truncate",
                                                "splice"]),
                               st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, value in ops:
        pos = where % (len(buf) + 1)
        if op == "replace" and buf:
            buf[pos % len(buf)] = value
        elif op == "insert":
            buf[pos:pos] = bytes([value])
        elif op == "delete" and buf:
            del buf[pos % len(buf)]
        elif op == "truncate":
            del buf[pos:]
        elif op == "splice" and buf:
            start = value % len(buf)
            buf[pos:pos] = buf[start:start + 8]
    return bytes(buf)


def outcome(mod, signal: Signal, data: bytes, plan_source):
    try:
        infos = mod.split_resources(signal, data)
        result = mod.rewrite(signal, data, plan_source(len(infos)))
        return ("ok", infos, result, mod.count_items(signal, data))
    except MalformedRequest as exc:
        return ("malformed", str(exc))


CHUNK = 500  # examples per hypothesis run: a fresh run keeps hypothesis' memory bounded


def run(examples: int, seed_value: int) -> int:
    stats = {"ok": 0, "malformed": 0}
    done = 0
    while done < examples:
        n = min(CHUNK, examples - done)
        _chunk(n, seed_value + done, stats)
        done += n
        print(f"{done} examples: {stats['ok']} accepted, {stats['malformed']} malformed, "
              "C and twin agree, no crash", flush=True)
    return 0


def _chunk(examples: int, seed_value: int, stats: dict[str, int]) -> None:
    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(signal=st.sampled_from(list(Signal)), data=st.data())
    def fuzz(signal, data):
        req = data.draw(requests_by_signal[signal])
        pool = data.draw(st.lists(plans(), min_size=1, max_size=3))
        mutated = mutate(req.SerializeToString(), data.draw(mutations))

        def plan_source(n):
            return [pool[i % len(pool)] for i in range(n)]

        expected = outcome(py, signal, mutated, plan_source)
        got = outcome(c, signal, mutated, plan_source)
        assert got == expected, (mutated, got, expected)
        stats[expected[0]] += 1

    fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    return run(args.examples, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
