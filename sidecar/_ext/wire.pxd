# The protobuf wire format as the rewriter reads and writes it: varints, tags, fields,
# lengths, the output buffers and the edit list. Hot, so inline in every module that cimports
# it (one copy per module, as if in the same file); the cold parts (growing a buffer, the
# error as an exception) are in ext/wire.pyx. The twin: sidecar/rewrite/_wire.py.

from cpython.mem cimport PyMem_Realloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove

from sidecar._ext.state cimport (
    ANY,
    E_FIELD0,
    E_FIXED_TRUNC,
    E_GROWTH,
    E_LEN_TRUNC,
    E_MEMORY,
    E_NONE,
    E_TAG,
    E_VARINT_LONG,
    E_VARINT_TRUNC,
    E_WIRETYPE,
    EDIT_BYTES,
    KV,
    Buf,
    Edit,
    Field,
    St,
)


cdef int buf_grow(St* st, Buf* b, Py_ssize_t need) noexcept
cdef object error_of(St* st)


cdef inline int fail(St* st, int code, int t, uint32_t fn, int wt, Py_ssize_t off) noexcept:
    if st.err == E_NONE:
        st.err = code
        st.e_t = t
        st.e_fn = fn
        st.e_wt = wt
        st.e_off = off
    return -1


cdef inline int buf_reserve(St* st, Buf* b, Py_ssize_t extra) noexcept:
    if b.n + extra <= b.cap:
        return 0
    return buf_grow(st, b, b.n + extra)


cdef inline int buf_put(St* st, Buf* b, const unsigned char* src, Py_ssize_t n) noexcept:
    if buf_reserve(st, b, n) < 0:
        return -1
    if n:
        memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int varint_size(uint64_t v) noexcept:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline int buf_varint(St* st, Buf* b, uint64_t v) noexcept:
    if buf_reserve(st, b, 10) < 0:
        return -1
    while v >= 0x80:
        b.p[b.n] = <unsigned char>((v & 0x7F) | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <unsigned char>v
    b.n += 1
    return 0


cdef inline int buf_len_field(St* st, Buf* b, uint32_t fn, const unsigned char* src,
                              Py_ssize_t n) noexcept:
    if buf_varint(st, b, (<uint64_t>fn << 3) | 2) < 0 or buf_varint(st, b, <uint64_t>n) < 0:
        return -1
    return buf_put(st, b, src, n)


cdef inline Py_ssize_t len_field_size(uint32_t fn, Py_ssize_t n) noexcept:
    return varint_size((<uint64_t>fn << 3) | 2) + varint_size(<uint64_t>n) + n


cdef inline int add_edit(St* st, Py_ssize_t start, Py_ssize_t end, Py_ssize_t mark,
                  Py_ssize_t at) noexcept:
    """Record an edit replacing data[start:end] by arena[mark:]; insert at index ``at`` if >= 0.
    Each record is charged its replacement and EDIT_BYTES: past st.max_growth the walk stops
    (E_GROWTH) before anything more is built."""
    cdef Edit* e
    cdef Py_ssize_t cap
    if st.dry:
        st.arena.n = mark
        return 0
    if st.nedits and (at < 0 or at >= st.nedits) and st.arena.n == mark:
        e = &st.edits[st.nedits - 1]
        if e.rlen == 0 and e.end == start:  # a deletion right after a deletion (dropped spans)
            e.end = end
            return 0
    st.grown += st.arena.n - mark + EDIT_BYTES
    if st.grown > st.max_growth:
        return fail(st, E_GROWTH, 0, 0, 0, 0)
    if st.nedits == st.capedits:
        cap = st.capedits * 2 if st.capedits else 64
        e = <Edit*>PyMem_Realloc(st.edits, sizeof(Edit) * cap)
        if e == NULL:
            return fail(st, E_MEMORY, 0, 0, 0, 0)
        st.edits = e
        st.capedits = cap
    if at < 0 or at >= st.nedits:
        e = &st.edits[st.nedits]
    else:
        memmove(&st.edits[at + 1], &st.edits[at], sizeof(Edit) * (st.nedits - at))
        e = &st.edits[at]
    st.nedits += 1
    e.start = start
    e.end = end
    e.roff = mark
    e.rlen = st.arena.n - mark
    return 0


# ---- reading ----


cdef inline int read_varint(St* st, Py_ssize_t* pos, Py_ssize_t end, int t,
                            uint64_t* out) noexcept:
    cdef const unsigned char* b = st.data
    cdef Py_ssize_t p = pos[0]
    cdef Py_ssize_t start = p
    cdef uint64_t r = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        if p >= end:
            return fail(st, E_VARINT_TRUNC, t, 0, 0, start)
        c = b[p]
        p += 1
        if shift < 64:
            r |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            pos[0] = p
            out[0] = r
            return 0
        shift += 7
        if shift >= 70:
            return fail(st, E_VARINT_LONG, t, 0, 0, start)


cdef inline int next_field(St* st, Py_ssize_t pos, Py_ssize_t end, int t, Field* f) noexcept:
    cdef const unsigned char* b = st.data
    cdef unsigned char tag
    # fast path: a one-byte tag of a length-delimited field with a one-byte length that fits
    if pos + 1 < end:
        tag = b[pos]
        if (tag & 0x87) == 2 and tag >= 8 and b[pos + 1] < 0x80 \
                and pos + 2 + b[pos + 1] <= end:
            f.fn = tag >> 3
            f.wt = 2
            f.vs = pos + 2
            f.ve = pos + 2 + b[pos + 1]
            f.v = 0
            return 0
    return next_field_slow(st, pos, end, t, f)


cdef inline int next_field_slow(St* st, Py_ssize_t pos, Py_ssize_t end, int t, Field* f) noexcept:
    cdef Py_ssize_t tag_pos = pos
    cdef uint64_t key, ln
    cdef Py_ssize_t p = pos
    cdef int n
    if read_varint(st, &p, end, t, &key) < 0:
        return -1
    f.fn = <uint32_t>(key >> 3)
    f.wt = <int>(key & 7)
    if (key >> 32) != 0:
        return fail(st, E_TAG, t, 0, 0, tag_pos)
    if f.fn == 0:
        return fail(st, E_FIELD0, t, 0, 0, tag_pos)
    if f.wt == 2:
        if read_varint(st, &p, end, t, &ln) < 0:
            return -1
        if ln > <uint64_t>(end - p):
            return fail(st, E_LEN_TRUNC, t, f.fn, 2, tag_pos)
        f.vs = p
        f.ve = p + <Py_ssize_t>ln
        f.v = 0
        return 0
    if f.wt == 0:
        f.vs = p
        if read_varint(st, &p, end, t, &f.v) < 0:
            return -1
        f.ve = p
        return 0
    if f.wt == 1 or f.wt == 5:
        n = 8 if f.wt == 1 else 4
        if end - p < n:
            return fail(st, E_FIXED_TRUNC, t, f.fn, n * 8, tag_pos)
        f.vs = p
        f.ve = p + n
        f.v = 0
        return 0
    return fail(st, E_WIRETYPE, t, f.fn, f.wt, tag_pos)


cdef inline Py_ssize_t tag_size(St* st, Py_ssize_t pos) noexcept:
    cdef Py_ssize_t p = pos
    while st.data[p] >= 0x80:
        p += 1
    return p + 1 - pos


cdef inline int64_t signed64(uint64_t v) noexcept:
    return <int64_t>v


cdef inline double as_double(const unsigned char* p) noexcept:
    cdef double d
    memcpy(&d, p, 8)  # little-endian hosts (x86-64, aarch64)
    return d


# ---- reading a KeyValue and an AnyValue ----


cdef inline int kv_key(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* ks,
                Py_ssize_t* ke) noexcept:
    cdef Py_ssize_t pos = vs
    cdef Field f
    ks[0] = vs
    ke[0] = vs
    while pos < ve:
        if next_field(st, pos, ve, KV, &f) < 0:
            return -1
        if f.fn == 1 and f.wt == 2:
            ks[0] = f.vs
            ke[0] = f.ve
        pos = f.ve
    return 0


cdef inline int any_kind(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* ks, Py_ssize_t* ke,
                  uint64_t* kv_) noexcept:
    """Field number of the last oneof field of the AnyValue (0 if none), or -1 on error."""
    cdef int kind = 0
    cdef Py_ssize_t pos = vs
    cdef Field f
    ks[0] = vs
    ke[0] = vs
    kv_[0] = 0
    while pos < ve:
        if next_field(st, pos, ve, ANY, &f) < 0:
            return -1
        if 1 <= f.fn <= 8:
            kind = f.fn
            ks[0] = f.vs
            ke[0] = f.ve
            kv_[0] = f.v
        pos = f.ve
    return kind


cdef inline int last_value(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* tp, Py_ssize_t* s,
                    Py_ssize_t* e, int remove_earlier, Py_ssize_t* delta) noexcept:
    """Find the last `value` field of a KeyValue; optionally remove the earlier ones.

    Returns 1 when found, 0 when none, -1 on error.
    """
    cdef Py_ssize_t pos = vs, tag_pos
    cdef int found = 0
    cdef Field f
    while pos < ve:
        tag_pos = pos
        if next_field(st, pos, ve, KV, &f) < 0:
            return -1
        if f.fn == 2 and f.wt == 2:
            if found and remove_earlier:
                if add_edit(st, tp[0], e[0], st.arena.n, -1) < 0:
                    return -1
                delta[0] -= e[0] - tp[0]
            found = 1
            tp[0] = tag_pos
            s[0] = f.vs
            e[0] = f.ve
        pos = f.ve
    return found
