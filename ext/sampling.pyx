# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Sampling (OTEP 235): writing the tracestate of a kept span. Reading it and the keep rules
run for every span and are inline in ``sidecar/_ext/sampling.pxd``. The twin:
``sidecar/rewrite/_sampling.py``."""

from libc.stdint cimport uint64_t

from sidecar._ext.state cimport Buf, St
from sidecar._ext.wire cimport buf_put

IMPLEMENTATION = "cython"

cdef const char* HEXD = b"0123456789abcdef"
cdef const char* OT_TH = b"ot=th:"
cdef const char* OT_EQ = b"ot="


cdef int put_rest(St* st, Buf* b, const unsigned char* s, TS* ts, int first) noexcept:
    """Append the `ot` sub-keys other than th (non-empty), `;`-separated."""
    cdef Py_ssize_t c = ts.ots, d
    cdef unsigned char semi = 59
    while c <= ts.ote:
        d = c
        while d < ts.ote and s[d] != 59:
            d += 1
        if d > c and not (d - c >= 3 and s[c] == 116 and s[c + 1] == 104 and s[c + 2] == 58):
            if not first and buf_put(st, b, &semi, 1) < 0:
                return -1
            if buf_put(st, b, s + c, d - c) < 0:
                return -1
            first = 0
        c = d + 1
    return 0


cdef int build_ts(St* st, Buf* b, const unsigned char* s, TS* ts, int with_th,
                  uint64_t th) noexcept:
    """Write the new tracestate into b: the `ot` entry first, then the others (32 at most)."""
    cdef int written = 0, i
    cdef Py_ssize_t mark
    cdef unsigned char comma = 44
    cdef unsigned char hx[14]
    cdef int nh = 14
    b.n = 0
    if with_th:
        if buf_put(st, b, <const unsigned char*>OT_TH, 6) < 0:
            return -1
        for i in range(14):
            hx[13 - i] = <unsigned char>HEXD[(th >> (4 * i)) & 15]
        while nh > 1 and hx[nh - 1] == 48:
            nh -= 1
        if buf_put(st, b, hx, nh) < 0:
            return -1
        if ts.has_ot and put_rest(st, b, s, ts, 0) < 0:
            return -1
        written = 1
    elif ts.has_ot:
        if buf_put(st, b, <const unsigned char*>OT_EQ, 3) < 0:
            return -1
        mark = b.n
        if put_rest(st, b, s, ts, 1) < 0:
            return -1
        if b.n == mark:
            b.n = 0
        else:
            written = 1
    for i in range(ts.nothers):
        if written >= 32:
            break
        if written and buf_put(st, b, &comma, 1) < 0:
            return -1
        if buf_put(st, b, s + ts.ms[i], ts.me[i] - ts.ms[i]) < 0:
            return -1
        written += 1
    return 0
