# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Resource stamps (set a resource attribute, e.g. the tenant) and the refusal of a resource
(the plan refuses it, or a rejecting stamp conflicts). The twin: ``sidecar/rewrite/_stamps.py``."""

from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from sidecar._ext.state cimport ANY, KV, RESOURCE, Buf, CPlan, Field, Stamp, St
from sidecar._ext.wire cimport (
    add_edit,
    any_kind,
    buf_len_field,
    buf_varint,
    kv_key,
    last_value,
    len_field_size,
    next_field,
)

IMPLEMENTATION = "cython"


cdef int put_stamp_attr(St* st, Buf* b, Stamp* s) noexcept:
    """Append a Resource.attributes field (1) holding KeyValue{key, string value}."""
    cdef Py_ssize_t inner = len_field_size(1, s.vlen)
    cdef Py_ssize_t kvlen = len_field_size(1, s.klen) + len_field_size(2, inner)
    if buf_varint(st, b, 0x0A) < 0 or buf_varint(st, b, kvlen) < 0:
        return -1
    if buf_len_field(st, b, 1, s.key, s.klen) < 0:
        return -1
    if buf_varint(st, b, 0x12) < 0 or buf_varint(st, b, inner) < 0:
        return -1
    return buf_len_field(st, b, 1, s.val, s.vlen)


cdef Stamp* find_stamp(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef int i
    for i in range(plan.nstamps):
        if plan.stamps[i].klen == kn and memcmp(plan.stamps[i].key, key, kn) == 0:
            return &plan.stamps[i]
    return NULL


cdef int is_stamp_kv(St* st, Stamp* s, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """Whether data[vs:ve] is the stamp's KeyValue as encoders write it: one key, one value of
    one string, no byte more (1), or not (0); -1 on error."""
    cdef Py_ssize_t inner = len_field_size(1, s.vlen)
    cdef Field f
    if ve - vs != len_field_size(1, s.klen) + len_field_size(2, inner):
        return 0
    if next_field(st, vs, ve, KV, &f) < 0:
        return -1
    if f.fn != 1 or f.wt != 2 or f.ve - f.vs != s.klen or memcmp(st.data + f.vs, s.key, s.klen) != 0:
        return 0
    if next_field(st, f.ve, ve, KV, &f) < 0:
        return -1
    if f.fn != 2 or f.wt != 2 or f.ve != ve or f.ve - f.vs != inner:
        return 0
    if next_field(st, f.vs, ve, ANY, &f) < 0:
        return -1
    return f.fn == 1 and f.wt == 2 and f.ve == ve and f.ve - f.vs == s.vlen and \
        memcmp(st.data + f.vs, s.val, s.vlen) == 0


cdef Py_ssize_t apply_stamp(St* st, Stamp* stamp, Py_ssize_t tag_pos, Py_ssize_t vs,
                             Py_ssize_t ve) noexcept:
    """The resource attribute in data[vs:ve] (already checked) has stamp's key: replace it by
    the stamp unless it is the stamp's KeyValue as encoders write it (one key, one value of one
    string): an earlier `key` field or value member, which a parser drops, would otherwise leave
    unscanned. Returns the size change."""
    cdef Py_ssize_t mark, rl
    cdef int same = is_stamp_kv(st, stamp, vs, ve)
    if same != 0:  # the same (nothing to do), or an error (recorded)
        return 0
    st.counts[stamp.stamp_slot] += 1
    mark = st.arena.n
    if put_stamp_attr(st, &st.arena, stamp) < 0:
        return 0
    rl = st.arena.n - mark
    if add_edit(st, tag_pos, ve, mark, -1) < 0:
        return 0
    return rl - (ve - tag_pos)


cdef Py_ssize_t insert_stamps(St* st, Py_ssize_t end, Py_ssize_t start, int t) noexcept:
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t pos = start, ks, ke, mark
    cdef Field f
    cdef int i
    cdef char present[64]
    cdef Stamp* s
    cdef int nst = plan.nstamps if plan.nstamps < 64 else 64
    for i in range(nst):
        present[i] = 0
    while pos < end:
        if next_field(st, pos, end, t, &f) < 0:
            return 0
        if f.fn == 1 and f.wt == 2:
            if kv_key(st, f.vs, f.ve, &ks, &ke) < 0:
                return 0
            s = find_stamp(plan, st.data + ks, ke - ks)
            if s != NULL and s.index < 64:
                present[s.index] = 1
        pos = f.ve
    mark = st.arena.n
    for i in range(nst):
        if not present[i]:
            st.counts[plan.stamps[i].stamp_slot] += 1
            if put_stamp_attr(st, &st.arena, &plan.stamps[i]) < 0:
                return 0
    if st.arena.n == mark:
        return 0
    cdef Py_ssize_t rl = st.arena.n - mark
    if add_edit(st, end, end, mark, -1) < 0:
        return 0
    return rl


cdef Py_ssize_t new_resource(St* st, Py_ssize_t end) noexcept:
    """Insert Resource{attributes: the stamps} at end, as field 1, for a resource that has no
    Resource message. Returns the size change."""
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t mark
    cdef int i
    st.scratch.n = 0
    for i in range(plan.nstamps):
        if put_stamp_attr(st, &st.scratch, &plan.stamps[i]) < 0:
            return 0
        st.counts[plan.stamps[i].stamp_slot] += 1
    mark = st.arena.n
    if buf_len_field(st, &st.arena, 1, st.scratch.p, st.scratch.n) < 0:
        return 0
    cdef Py_ssize_t rl = st.arena.n - mark
    add_edit(st, end, end, mark, -1)
    return rl


cdef int stamp_conflict(St* st, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """Index of a rejecting stamp the attribute in data[vs:ve] conflicts with, or -1 (-2: error)."""
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t ks, ke, tp = 0, s = 0, e = 0, dummy = 0, xs, xe
    cdef uint64_t kvv
    cdef int i, found, kind
    cdef Stamp* x
    if kv_key(st, vs, ve, &ks, &ke) < 0:
        return -2
    for i in range(plan.nstamps):
        x = &plan.stamps[i]
        if not x.reject or x.klen != ke - ks or memcmp(x.key, st.data + ks, x.klen) != 0:
            continue
        found = last_value(st, vs, ve, &tp, &s, &e, 0, &dummy)
        if found < 0:
            return -2
        if found:
            kind = any_kind(st, s, e, &xs, &xe, &kvv)
            if kind < 0:
                return -2
            if kind == 1 and xe - xs == x.vlen and memcmp(st.data + xs, x.val, x.vlen) == 0:
                continue
        return i
    return -1


cdef int refusal(St* st, int t, Py_ssize_t s, Py_ssize_t e) noexcept:
    """-1: allowed; -2: error; -3: the plan refuses; else the index of the conflicting stamp."""
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t pos = s, p
    cdef Field f, g
    cdef int r
    if not plan.allow:
        return -3
    if not plan.any_reject:
        return -1
    while pos < e:
        if next_field(st, pos, e, t, &f) < 0:
            return -2
        pos = f.ve
        if f.fn != 1 or f.wt != 2:
            continue
        p = f.vs
        while p < f.ve:
            if next_field(st, p, f.ve, RESOURCE, &g) < 0:
                return -2
            p = g.ve
            if g.fn == 1 and g.wt == 2:
                r = stamp_conflict(st, g.vs, g.ve)
                if r != -1:
                    return r
    return -1
