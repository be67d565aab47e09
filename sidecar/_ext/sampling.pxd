# Sampling: the span's tracestate (W3C, with OpenTelemetry's `ot` entry) and the keep rules.
# The walk that decides per span (span() in ext/rewrite.pyx) calls these. What runs for every
# span (reading the tracestate, the keep rules) is inline here, so it compiles into the walk as
# if in the same file (measured: 4 % slower as calls into sampling.pyx); what runs for a kept
# span only (writing the new tracestate) is in ext/sampling.pyx. The twin:
# sidecar/rewrite/_sampling.py.

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from sidecar._ext.cards cimport is_digit
from sidecar._ext.state cimport (
    KEEP_AT_LEAST,
    KEEP_EQUALS,
    KEEP_STATUS_ERROR,
    VT_BOOL,
    VT_DOUBLE,
    VT_INT,
    VT_STR,
    Buf,
    CPlan,
    Keep,
    St,
)
from sidecar._ext.wire cimport any_kind, as_double, kv_key, last_value


cdef struct TS:
    # up to 32 members other than `ot`, kept in order
    Py_ssize_t ms[32]
    Py_ssize_t me[32]
    int nothers
    Py_ssize_t ots
    Py_ssize_t ote
    int has_ot
    int64_t rv
    int64_t th
    int has_th


cdef int build_ts(St* st, Buf* b, const unsigned char* s, TS* ts, int with_th,
                  uint64_t th) noexcept


cdef inline bint is_lhex(unsigned char c) noexcept:
    return is_digit(c) or (97 <= c <= 102)


cdef inline uint64_t hexval(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v = (v << 4) | <uint64_t>(p[i] - 48 if p[i] <= 57 else p[i] - 87)
    return v


cdef inline bint is_ows(unsigned char c) noexcept:
    return c == 32 or c == 9


cdef inline bint all_lhex(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if not is_lhex(p[i]):
            return False
    return True


cdef inline void parse_ts(const unsigned char* s, Py_ssize_t n, TS* ts) noexcept:
    cdef Py_ssize_t p = 0, a, b, q, c, d
    ts.nothers = 0
    ts.has_ot = 0
    ts.rv = -1
    ts.th = -1
    ts.has_th = 0
    while p <= n:
        q = p
        while q < n and s[q] != 44:
            q += 1
        a = p
        b = q
        while a < b and is_ows(s[a]):
            a += 1
        while b > a and is_ows(s[b - 1]):
            b -= 1
        if b > a:
            if not ts.has_ot and b - a >= 3 and s[a] == 111 and s[a + 1] == 116 \
                    and s[a + 2] == 61:
                ts.has_ot = 1
                ts.ots = a + 3
                ts.ote = b
                c = a + 3
                while c <= b:
                    d = c
                    while d < b and s[d] != 59:
                        d += 1
                    if d - c >= 3 and s[c] == 116 and s[c + 1] == 104 and s[c + 2] == 58:
                        ts.has_th = 1
                        if 1 <= d - c - 3 <= 14 and all_lhex(s + c + 3, d - c - 3):
                            ts.th = <int64_t>(hexval(s + c + 3, d - c - 3)
                                              << (4 * (14 - (d - c - 3))))
                    elif d - c == 17 and s[c] == 114 and s[c + 1] == 118 and s[c + 2] == 58 \
                            and all_lhex(s + c + 3, 14):
                        ts.rv = <int64_t>hexval(s + c + 3, 14)
                    c = d + 1
            elif ts.nothers < 32:
                ts.ms[ts.nothers] = a
                ts.me[ts.nothers] = b
                ts.nothers += 1
        p = q + 1


cdef inline int keep_rule(St* st, uint64_t status_code) noexcept:
    """The count slot of the first keep rule the span meets (its attributes in st.attrs), or -1
    (-1 with st.err set on error: the twin's errors, in its order)."""
    cdef CPlan* plan = st.plan
    cdef Keep* k
    cdef int i, kind, found
    cdef Py_ssize_t j, s, e, ks, ke, tp = 0, vs_ = 0, ve_ = 0, dummy = 0, xs, xe
    cdef uint64_t kvv
    for i in range(plan.nkeeps):
        k = &plan.keeps[i]
        if k.kind == KEEP_STATUS_ERROR:
            if status_code == 2:
                return k.slot
            continue
        j = 0
        while j < st.nattrs:
            s = st.attrs[j]
            e = st.attrs[j + 1]
            ks = st.attrs[j + 2]
            ke = st.attrs[j + 3]
            j += 4
            if ks < 0 and kv_key(st, s, e, &ks, &ke) < 0:
                return -1
            if ke - ks != k.klen or memcmp(st.data + ks, k.key, k.klen) != 0:
                continue
            found = last_value(st, s, e, &tp, &vs_, &ve_, 0, &dummy)
            if found < 0:
                return -1
            if not found:
                continue
            kind = any_kind(st, vs_, ve_, &xs, &xe, &kvv)
            if kind < 0:
                return -1
            if keep_matches(st, k, kind, xs, xe, kvv):
                return k.slot
    return -1


cdef inline bint keep_matches(St* st, Keep* k, int kind, Py_ssize_t ks, Py_ssize_t ke,
                       uint64_t kv_) noexcept:
    if k.kind == KEEP_EQUALS:
        if k.vtype == VT_STR:
            return kind == 1 and ke - ks == k.slen and memcmp(st.data + ks, k.sval, k.slen) == 0
        if k.vtype == VT_BOOL:
            return kind == 2 and (kv_ != 0) == (k.ival != 0)
        if k.vtype == VT_INT:
            return kind == 3 and <int64_t>kv_ == k.ival
        if k.vtype == VT_DOUBLE:
            return kind == 4 and ke - ks == 8 and as_double(st.data + ks) == k.dval
        return False
    if k.kind == KEEP_AT_LEAST:
        if kind == 3:
            if k.int_threshold:
                return <int64_t>kv_ >= k.ival
            return <double>(<int64_t>kv_) >= k.dval
        if kind == 4:
            return ke - ks == 8 and as_double(st.data + ks) >= k.dval
    return False
