# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The C rewriter: a line-by-line port of ``sidecar/rewrite/_py.py`` (the reference).

Same API and the same bytes out; the tests cross the two. Everything per item (span,
log record, data point) runs in C on the request bytes: no Python object per item. Only
keyed hashes (rare) call Python's ``hmac``. Plans are compiled once into C structs
(memoized per Plan). See docs/rewriter.md.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

import hmac as _hmac

from sidecar.rewrite._common import (
    HASH_PREFIX_BYTES,
    MalformedRequest,
    ResourceInfo,
    RewriteResult,
    compile_plan,
    decode_attributes,
)
from sidecar.rewrite._schema import FIELDS, HOLDS_ITEMS, ITEMS, MAX_NESTING, NAMES, REQUEST_TYPE, RS_TYPE
from sidecar.rewrite.plan import Plan

__all__ = ["IMPLEMENTATION", "MalformedRequest", "ResourceInfo", "RewriteResult",
           "count_items", "find_pans", "rewrite", "split_resources"]

IMPLEMENTATION = "cython"

# ---- schema (copied from sidecar/rewrite/_schema.py at import) ----
cdef enum:
    NTYPES = 30
    MAXF = 17
cdef enum:
    RS_SPANS = 0
    RS_METRICS = 1
    RS_LOGS = 2
    RESOURCE = 3
    SPAN = 8
    STATUS = 11
    KV = 23
    ANY = 24
    ARRAY = 25
    KVLIST = 26
cdef enum:
    F_STR = 1
    F_KV = 2
    F_TS = 3
    F_SUB = 32
cdef enum:
    ACT_DROP = 1
    ACT_REDACT = 2
    ACT_HASH = 3
    ACT_MASK = 4
    ACT_KEEP = 5
cdef enum:
    KEEP_STATUS_ERROR = 1
    KEEP_EQUALS = 2
    KEEP_AT_LEAST = 3
cdef enum:
    VT_STR = 1
    VT_BOOL = 2
    VT_INT = 3
    VT_DOUBLE = 4
cdef enum:
    E_NONE = 0
    E_VARINT_TRUNC = 1
    E_VARINT_LONG = 2
    E_TAG = 3
    E_FIELD0 = 4
    E_LEN_TRUNC = 5
    E_FIXED_TRUNC = 6
    E_WIRETYPE = 7
    E_WRONG_WT = 8
    E_MEMORY = 9
    E_PYTHON = 10
    E_DEPTH = 11

cdef uint64_t MAX_THRESHOLD = (<uint64_t>1) << 56
cdef const char* HEXD = b"0123456789abcdef"
cdef const char* OT_TH = b"ot=th:"
cdef const char* OT_EQ = b"ot="
cdef int FMAP[NTYPES][MAXF]
cdef bint IS_ITEM[NTYPES]
cdef bint HOLDS[NTYPES]


def _load_schema():
    cdef int t, f
    for t in range(NTYPES):
        IS_ITEM[t] = t in ITEMS
        HOLDS[t] = t in HOLDS_ITEMS
        for f in range(MAXF):
            FMAP[t][f] = FIELDS.get(t, {}).get(f, 0)
    for t, fmap in FIELDS.items():
        for f in fmap:
            if f >= MAXF:
                raise RuntimeError("schema field number out of range for the C table")


_load_schema()

# ---- compiled plans in C ----

cdef enum:
    G_EXACT = 0
    G_GENERAL = 1
    G_CONTAINS = 2  # *lit*
    G_PREFIX = 3  # lit*
    G_SUFFIX = 4  # *lit

cdef struct Rule:
    const unsigned char* pat
    Py_ssize_t plen
    int is_glob
    const unsigned char* lit
    Py_ssize_t llen
    Py_ssize_t minlen
    const unsigned char* need
    Py_ssize_t nlen
    int action
    int slot

cdef struct Stamp:
    const unsigned char* key
    Py_ssize_t klen
    const unsigned char* val
    Py_ssize_t vlen
    int reject
    int stamp_slot
    int refuse_slot
    int index

cdef struct Keep:
    int kind
    const unsigned char* key
    Py_ssize_t klen
    int vtype
    const unsigned char* sval
    Py_ssize_t slen
    int64_t ival
    double dval
    int int_threshold
    int slot

cdef struct CPlan:
    uint64_t id
    int noop
    int allow
    int refuse_slot
    Rule* rules
    int nrules
    int det_action
    int det_slot
    Stamp* stamps
    int nstamps
    int any_reject
    int sampling
    uint64_t threshold
    int sample_slot
    Keep* keeps
    int nkeeps
    int keep_attrs
    const unsigned char* redaction
    Py_ssize_t rlen
    int dry_run
    int nslots


#: ids of compiled plans, never reused (the key cache below tells plans apart by id)
cdef uint64_t _NEXT_PLAN_ID = 0


cdef class _PlanBox:
    """A compiled plan as C structs; keeps the bytes its pointers point into alive."""

    cdef CPlan p
    cdef object compiled
    cdef object hash_key
    cdef list refs

    def __cinit__(self):
        self.p.rules = NULL
        self.p.stamps = NULL
        self.p.keeps = NULL

    def __dealloc__(self):
        PyMem_Free(self.p.rules)
        PyMem_Free(self.p.stamps)
        PyMem_Free(self.p.keeps)

    cdef const unsigned char* _keep(self, bytes b):
        self.refs.append(b)
        return <const unsigned char*>PyBytes_AS_STRING(b)

    cdef void load(self, object c) except *:
        cdef int i
        self.compiled = c
        self.refs = []
        self.hash_key = c.hash_key
        global _NEXT_PLAN_ID
        _NEXT_PLAN_ID += 1
        self.p.id = _NEXT_PLAN_ID
        self.p.noop = c.noop
        self.p.allow = c.allow
        self.p.refuse_slot = c.refuse_slot
        self.p.nrules = len(c.rules)
        self.p.rules = <Rule*>PyMem_Malloc(sizeof(Rule) * (self.p.nrules + 1))
        self.p.nstamps = len(c.stamps)
        self.p.stamps = <Stamp*>PyMem_Malloc(sizeof(Stamp) * (self.p.nstamps + 1))
        self.p.nkeeps = len(c.keeps)
        self.p.keeps = <Keep*>PyMem_Malloc(sizeof(Keep) * (self.p.nkeeps + 1))
        if self.p.rules == NULL or self.p.stamps == NULL or self.p.keeps == NULL:
            raise MemoryError()
        for i, r in enumerate(c.rules):
            self.p.rules[i].pat = self._keep(r.pattern)
            self.p.rules[i].plen = len(r.pattern)
            self.p.rules[i].is_glob = G_EXACT
            self.p.rules[i].lit = self.p.rules[i].pat
            self.p.rules[i].llen = len(r.pattern)
            self.p.rules[i].minlen = len(r.pattern) - r.pattern.count(b"*")
            need = max(r.pattern.replace(b"?", b"*").split(b"*"), key=len)
            self.p.rules[i].need = self._keep(need)
            self.p.rules[i].nlen = len(need)
            if r.is_glob:
                core = r.pattern.strip(b"*")
                plain = b"*" not in core and b"?" not in core
                self.p.rules[i].is_glob = G_GENERAL
                if plain and core:
                    self.p.rules[i].lit = self._keep(core)
                    self.p.rules[i].llen = len(core)
                    if r.pattern == b"*" + core + b"*":
                        self.p.rules[i].is_glob = G_CONTAINS
                    elif r.pattern == core + b"*":
                        self.p.rules[i].is_glob = G_PREFIX
                    elif r.pattern == b"*" + core:
                        self.p.rules[i].is_glob = G_SUFFIX
            self.p.rules[i].action = r.action
            self.p.rules[i].slot = r.slot
        self.p.det_action = c.det_action
        self.p.det_slot = c.det_slot
        self.p.any_reject = 0
        for i, s in enumerate(c.stamps):
            self.p.stamps[i].key = self._keep(s.key)
            self.p.stamps[i].klen = len(s.key)
            self.p.stamps[i].val = self._keep(s.value)
            self.p.stamps[i].vlen = len(s.value)
            self.p.stamps[i].reject = s.reject
            self.p.stamps[i].stamp_slot = s.stamp_slot
            self.p.stamps[i].refuse_slot = s.refuse_slot
            self.p.stamps[i].index = i
            if s.reject:
                self.p.any_reject = 1
        self.p.sampling = c.sampling
        self.p.threshold = c.threshold
        self.p.sample_slot = c.sample_slot
        self.p.keep_attrs = any(k.kind != 1 for k in c.keeps)
        for i, k in enumerate(c.keeps):
            self.p.keeps[i].kind = k.kind
            self.p.keeps[i].key = self._keep(k.key)
            self.p.keeps[i].klen = len(k.key)
            self.p.keeps[i].vtype = k.vtype
            self.p.keeps[i].sval = self._keep(k.svalue)
            self.p.keeps[i].slen = len(k.svalue)
            self.p.keeps[i].ival = k.ivalue
            self.p.keeps[i].dval = k.dvalue
            self.p.keeps[i].int_threshold = k.int_threshold
            self.p.keeps[i].slot = k.slot
        self.p.redaction = self._keep(c.redaction)
        self.p.rlen = len(c.redaction)
        self.p.dry_run = c.dry_run
        self.p.nslots = len(c.slots)


cdef _PlanBox _box(object plan):
    """The C form of ``plan``, made once per plan object and kept on it (as ``compile_plan``
    keeps the compiled form): it is freed with the plan, so the policy caches bound it."""
    cdef dict held = plan.__dict__
    cdef _PlanBox box = held.get("_box")
    if box is not None:
        return box
    box = _PlanBox()
    box.load(compile_plan(plan))
    object.__setattr__(plan, "_box", box)
    return box


cdef _PlanBox _NULL_BOX = _box(Plan())

# ---- walk state ----

cdef struct Edit:
    Py_ssize_t start
    Py_ssize_t end
    Py_ssize_t roff
    Py_ssize_t rlen

cdef struct Field:
    uint32_t fn
    int wt
    Py_ssize_t vs
    Py_ssize_t ve
    uint64_t v

cdef struct Pan:
    Py_ssize_t i
    Py_ssize_t j
    int nd
    unsigned char digits[20]

cdef struct Buf:
    unsigned char* p
    Py_ssize_t n
    Py_ssize_t cap

cdef struct St:
    const unsigned char* data
    Py_ssize_t size
    Edit* edits
    Py_ssize_t nedits
    Py_ssize_t capedits
    Buf arena
    Buf scratch
    Pan* pans
    int cappans
    Py_ssize_t* attrs
    Py_ssize_t nattrs
    Py_ssize_t capattrs
    CPlan* plan
    void* box
    int64_t* counts
    int dry
    int depth
    int max_depth
    Py_ssize_t items_in
    Py_ssize_t sampled_out
    const unsigned char* ts_new
    Py_ssize_t ts_new_len
    int has_ts_new
    Py_ssize_t ts_last
    # error
    int err
    int e_t
    uint32_t e_fn
    int e_wt
    Py_ssize_t e_off


cdef int fail(St* st, int code, int t, uint32_t fn, int wt, Py_ssize_t off) noexcept:
    if st.err == E_NONE:
        st.err = code
        st.e_t = t
        st.e_fn = fn
        st.e_wt = wt
        st.e_off = off
    return -1


cdef object _error(St* st):
    name = NAMES[st.e_t] if 0 <= st.e_t < NTYPES else "?"
    c = st.err
    if c == E_MEMORY:
        return MemoryError()
    if c == E_VARINT_TRUNC:
        return MalformedRequest(f"truncated varint in {name} at offset {st.e_off}")
    if c == E_VARINT_LONG:
        return MalformedRequest(f"varint too long in {name} at offset {st.e_off}")
    if c == E_TAG:
        return MalformedRequest(f"invalid tag in {name} at offset {st.e_off}")
    if c == E_FIELD0:
        return MalformedRequest(f"invalid field number 0 in {name} at offset {st.e_off}")
    if c == E_LEN_TRUNC:
        return MalformedRequest(
            f"truncated length-delimited field {st.e_fn} in {name} at offset {st.e_off}")
    if c == E_FIXED_TRUNC:
        return MalformedRequest(
            f"truncated fixed{st.e_wt} field {st.e_fn} in {name} at offset {st.e_off}")
    if c == E_WIRETYPE:
        return MalformedRequest(
            f"invalid wire type {st.e_wt} for field {st.e_fn} in {name} at offset {st.e_off}")
    if c == E_DEPTH:
        return MalformedRequest(f"values nested deeper than {MAX_NESTING} levels in {name} at"
                                f" offset {st.e_off}")
    if c == E_WRONG_WT:
        return MalformedRequest(
            f"wrong wire type {st.e_wt} for field {st.e_fn} in {name} at offset {st.e_off}")
    return RuntimeError("rewriter failed")


cdef int buf_reserve(St* st, Buf* b, Py_ssize_t extra) noexcept:
    cdef Py_ssize_t need = b.n + extra
    cdef Py_ssize_t cap
    cdef unsigned char* p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 256
    while cap < need:
        cap *= 2
    p = <unsigned char*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        return fail(st, E_MEMORY, 0, 0, 0, 0)
    b.p = p
    b.cap = cap
    return 0


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


cdef int add_edit(St* st, Py_ssize_t start, Py_ssize_t end, Py_ssize_t mark,
                  Py_ssize_t at) noexcept:
    """Record an edit replacing data[start:end] by arena[mark:]; insert at index ``at`` if >= 0."""
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


# ---- wire-format primitives ----

cdef int read_varint(St* st, Py_ssize_t* pos, Py_ssize_t end, int t,
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


cdef int next_field_slow(St* st, Py_ssize_t pos, Py_ssize_t end, int t, Field* f) noexcept:
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


# ---- card numbers ----

cdef inline bint is_digit(unsigned char c) noexcept:
    return <unsigned char>(c - 48) <= 9


cdef inline bint is_hex_any(unsigned char c) noexcept:
    return is_digit(c) or (97 <= c <= 102) or (65 <= c <= 70)


cdef bint brand_ok(const unsigned char* d, int n) noexcept:
    cdef int p1 = d[0] - 48
    cdef int p2 = p1 * 10 + (d[1] - 48)
    cdef int p3 = p2 * 10 + (d[2] - 48)
    cdef int p4 = p3 * 10 + (d[3] - 48)
    if p1 == 4 and (n == 13 or n == 16 or n == 19):
        return True
    if n == 16 and ((51 <= p2 <= 55) or (2221 <= p4 <= 2720)):
        return True
    if n == 15 and (p2 == 34 or p2 == 37):
        return True
    if (n == 16 or n == 19) and (p4 == 6011 or (644 <= p3 <= 649) or p2 == 65):
        return True
    if 16 <= n <= 19 and ((3528 <= p4 <= 3589) or p2 == 62 or p2 == 81 or (2200 <= p4 <= 2204)):
        return True
    if (n == 14 or n == 16) and ((300 <= p3 <= 305) or p2 == 36 or p2 == 38 or p2 == 39):
        return True
    return 12 <= n <= 19 and (p4 == 5018 or p4 == 5020 or p4 == 5038 or p4 == 5893
                              or p4 == 6304 or p4 == 6759 or (6761 <= p4 <= 6763))


cdef bint luhn_ok(const unsigned char* d, int n) noexcept:
    cdef int total = 0
    cdef int i, v
    for i in range(n):
        v = d[n - 1 - i] - 48
        if i & 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


cdef bint in_uuid(const unsigned char* s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t j) noexcept:
    cdef Py_ssize_t st0 = i - 35 if i > 35 else 0
    cdef Py_ssize_t last = j - 1
    cdef Py_ssize_t k, stt
    cdef bint ok
    if n - 36 < last:
        last = n - 36
    stt = st0
    while stt <= last:
        ok = True
        for k in range(36):
            if k == 8 or k == 13 or k == 18 or k == 23:
                if s[stt + k] != 45:
                    ok = False
                    break
            elif not is_hex_any(s[stt + k]):
                ok = False
                break
        if ok:
            return True
        stt += 1
    return False


cdef inline bint is_sep(unsigned char c) noexcept:
    return c == 32 or c == 45


cdef int find_pans_c(St* st, const unsigned char* s, Py_ssize_t n) noexcept:
    """Fill st.pans with the card numbers in s; return how many (or -1 on memory error).

    A card number's run spans at least 12 bytes, so only every 12th byte is probed; a
    probe that lands on a digit (or a separator between two digits) backs up to the start
    of its run, and runs are then read exactly as in the twin's left-to-right scan.
    """
    cdef Py_ssize_t q = 11
    cdef Py_ssize_t i, j
    cdef int nd, count = 0
    cdef unsigned char c, prev
    cdef unsigned char digits[20]
    cdef Pan* p
    while q < n:
        c = s[q]
        if is_digit(c):
            i = q
        elif is_sep(c) and q + 1 < n and is_digit(s[q - 1]) and is_digit(s[q + 1]):
            i = q - 1
        else:
            q += 12
            continue
        # back up to the start of the run holding s[i] (a digit)
        while i > 0:
            if is_digit(s[i - 1]):
                i -= 1
            elif i > 1 and is_sep(s[i - 1]) and is_digit(s[i - 2]):
                i -= 2
            else:
                break
        j = i
        nd = 0
        while j < n:
            c = s[j]
            if is_digit(c):
                if nd < 20:
                    digits[nd] = c
                nd += 1
                j += 1
            elif is_sep(c) and j + 1 < n and is_digit(s[j + 1]):
                j += 1
            else:
                break
        if 12 <= nd <= 19:
            prev = s[i - 1] if i > 0 else 0
            if i > 0 and (prev == 43 or ((prev == 44 or prev == 46) and i > 1
                                         and is_digit(s[i - 2]))):
                pass
            elif brand_ok(digits, nd) and luhn_ok(digits, nd) and not in_uuid(s, n, i, j):
                if count == st.cappans:
                    p = <Pan*>PyMem_Realloc(st.pans, sizeof(Pan) * (st.cappans * 2 + 8))
                    if p == NULL:
                        fail(st, E_MEMORY, 0, 0, 0, 0)
                        return -1
                    st.pans = p
                    st.cappans = st.cappans * 2 + 8
                p = &st.pans[count]
                p.i = i
                p.j = j
                p.nd = nd
                memcpy(p.digits, digits, nd)
                count += 1
        q = j + 11
    return count


cdef inline void mask_digits(unsigned char* b, Py_ssize_t i, Py_ssize_t j) noexcept:
    cdef int keep = 4
    cdef Py_ssize_t k = j - 1
    while k >= i:
        if is_digit(b[k]):
            if keep:
                keep -= 1
            else:
                b[k] = 42
        k -= 1


cdef int mask_edit(St* st, Py_ssize_t vs, Py_ssize_t ve, int n) noexcept:
    """Replace data[vs:ve] by a copy whose n card numbers (st.pans, offsets from vs) are masked;
    n < 0: every digit but the last four of it."""
    cdef Py_ssize_t mark = st.arena.n
    cdef int k
    if st.dry:
        return 0
    if buf_put(st, &st.arena, st.data + vs, ve - vs) < 0:
        return -1
    if n < 0:
        mask_digits(st.arena.p + mark, 0, ve - vs)
    for k in range(n):
        mask_digits(st.arena.p + mark, st.pans[k].i, st.pans[k].j)
    return add_edit(st, vs, ve, mark, -1)


cdef int put_hmac(St* st, Buf* b, const unsigned char* material, Py_ssize_t n) noexcept:
    """Append ``hmac-sha256:<hex>`` of material under the plan's key (Python's hmac: rare)."""
    cdef bytes out
    try:
        key = (<_PlanBox>st.box).hash_key
        out = HASH_PREFIX_BYTES + _hmac.digest(
            key, PyBytes_FromStringAndSize(<const char*>material, n), "sha256").hex().encode()
    except BaseException:
        return fail(st, E_PYTHON, 0, 0, 0, 0)
    return buf_put(st, b, <const unsigned char*>PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out))


# ---- the walk ----

cdef int validate(St* st, int t, Py_ssize_t start, Py_ssize_t end) noexcept:
    """The inactive walk: check the framing of the message and everything it holds, count
    items, change nothing. Same checks in the same order as walk(active=0)."""
    cdef int r
    if t == ARRAY or t == KVLIST:  # the only messages that nest without bound
        if st.depth >= st.max_depth:
            return fail(st, E_DEPTH, t, 0, 0, start)
        st.depth += 1
        r = validate_fields(st, t, start, end)
        st.depth -= 1
        return r
    return validate_fields(st, t, start, end)


cdef int validate_fields(St* st, int t, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t tag_pos
    cdef Field f
    cdef int* fmap = FMAP[t]
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, t, &f) < 0:
            return -1
        pos = f.ve
        if check_field(st, t, fmap[f.fn] if f.fn < MAXF else 0, &f, tag_pos) < 0:
            return -1
    return 0


cdef inline int check_field(St* st, int t, int code, Field* f, Py_ssize_t tag_pos) noexcept:
    """validate()'s checks of one field of a message of type t, whose code in FMAP[t] is code."""
    cdef Py_ssize_t ks, ke
    cdef int sub
    if code == 0:
        return 0
    if f.wt != 2:
        return fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
    if code == F_KV:
        return validate_kv(st, f.vs, f.ve, &ks, &ke)
    if code >= F_SUB:
        sub = code - F_SUB
        if IS_ITEM[sub]:
            st.items_in += 1
        if f.ve > f.vs:
            return validate(st, sub, f.vs, f.ve)
    return 0


cdef inline bint scalar_value(const unsigned char* d, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """Whether the AnyValue in d[vs:ve] is well formed and one short string, an int, a double or
    a bool, or empty (validate_kv's checks pass; anything else is left to them)."""
    cdef unsigned char tag
    cdef Py_ssize_t n, i
    if vs == ve:
        return True
    tag = d[vs]
    n = ve - vs - 1
    if tag == 0x0A:  # string_value
        return n >= 1 and d[vs + 1] == n - 1
    if tag == 0x21:  # double_value
        return n == 8
    if tag == 0x18 or tag == 0x10:  # int_value, bool_value: one varint of at most 10 bytes
        if n < 1 or n > 10 or d[ve - 1] >= 0x80:
            return False
        for i in range(vs + 1, ve - 1):
            if d[i] < 0x80:
                return False
        return True
    return False


cdef inline int validate_kv(St* st, Py_ssize_t start, Py_ssize_t end, Py_ssize_t* ks,
                            Py_ssize_t* ke) noexcept:
    """validate(KV, ...) without a call per level for the common scalar values; finds the key
    on the way (as kv_key)."""
    cdef const unsigned char* d = st.data
    cdef Py_ssize_t p
    # fast path: a short key, then one short value holding one string, int, double or bool
    if end - start >= 4 and d[start] == 0x0A and d[start + 1] < 0x80:
        p = start + 2 + d[start + 1]
        if p + 2 <= end and d[p] == 0x12 and d[p + 1] < 0x80 and p + 2 + d[p + 1] == end \
                and scalar_value(d, p + 2, end):
            ks[0] = start + 2
            ke[0] = p
            return 0
    return validate_kv_fields(st, start, end, ks, ke)


cdef int validate_kv_fields(St* st, Py_ssize_t start, Py_ssize_t end, Py_ssize_t* ks,
                            Py_ssize_t* ke) noexcept:
    cdef Py_ssize_t pos = start, p, tag_pos, vtag
    cdef Field f, g
    ks[0] = start
    ke[0] = start
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, KV, &f) < 0:
            return -1
        pos = f.ve
        if f.fn != 2:
            if f.fn == 1 and f.wt == 2:
                ks[0] = f.vs
                ke[0] = f.ve
            continue
        if f.wt != 2:
            return fail(st, E_WRONG_WT, KV, f.fn, f.wt, tag_pos)
        p = f.vs
        while p < f.ve:
            vtag = p
            if next_field(st, p, f.ve, ANY, &g) < 0:
                return -1
            p = g.ve
            if g.fn == 1 or g.fn == 5 or g.fn == 6:
                if g.wt != 2:
                    return fail(st, E_WRONG_WT, ANY, g.fn, g.wt, vtag)
                if g.fn == 5 and g.ve > g.vs and validate(st, ARRAY, g.vs, g.ve) < 0:
                    return -1
                if g.fn == 6 and g.ve > g.vs and validate(st, KVLIST, g.vs, g.ve) < 0:
                    return -1
    return 0


cdef Py_ssize_t walk(St* st, int t, Py_ssize_t start, Py_ssize_t end, int active) noexcept:
    """Walk the fields of a message of type t in data[start:end]; return the size change."""
    cdef Py_ssize_t d
    if not active:
        validate(st, t, start, end)
        return 0
    if t == ARRAY or t == KVLIST:  # the only messages that nest without bound
        if st.depth >= st.max_depth:
            fail(st, E_DEPTH, t, 0, 0, start)
            return 0
        st.depth += 1
        d = walk_fields(st, t, start, end)
        st.depth -= 1
        return d
    return walk_fields(st, t, start, end)


cdef Py_ssize_t walk_fields(St* st, int t, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef int active = 1
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t delta = 0
    cdef Py_ssize_t tag_pos, mark
    cdef CPlan* plan = st.plan
    cdef bint has_resource = False
    cdef Field f
    cdef int code, sub, i
    cdef int* fmap = FMAP[t]
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, t, &f) < 0:
            return 0
        pos = f.ve
        code = fmap[f.fn] if f.fn < MAXF else 0
        if code == 0:
            continue
        if f.wt != 2:
            fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
            return 0
        if code == F_STR:
            if active and plan.det_action:
                delta += scan_string(st, tag_pos, f.vs, f.ve, f.fn)
        elif code == F_KV:
            if t == RESOURCE and active and plan.nstamps:
                delta += stamp_kv(st, tag_pos, f.vs, f.ve)
            else:
                delta += kv(st, tag_pos, f.vs, f.ve, active)
        elif code == F_TS:
            if active and st.has_ts_new:
                mark = st.arena.n
                if tag_pos == st.ts_last:
                    if buf_len_field(st, &st.arena, 3, st.ts_new, st.ts_new_len) < 0:
                        return 0
                    delta += (st.arena.n - mark) - (f.ve - tag_pos)
                else:
                    delta -= f.ve - tag_pos
                if add_edit(st, tag_pos, f.ve, mark, -1) < 0:
                    return 0
        else:
            sub = code - F_SUB
            if sub == RESOURCE:
                has_resource = True
            if sub == SPAN and active and plan.sampling:
                delta += span(st, tag_pos, f.vs, f.ve)
            else:
                if IS_ITEM[sub]:
                    st.items_in += 1
                delta += submsg(st, sub, tag_pos, f.vs, f.ve, active)
        if st.err:
            return 0
    if active:
        if t == SPAN and st.has_ts_new and st.ts_last < 0:
            mark = st.arena.n
            if buf_len_field(st, &st.arena, 3, st.ts_new, st.ts_new_len) < 0:
                return 0
            delta += st.arena.n - mark
            add_edit(st, end, end, mark, -1)
        elif t == RESOURCE and plan.nstamps:
            delta += insert_stamps(st, end, start, t)
        elif (t == RS_SPANS or t == RS_METRICS or t == RS_LOGS) and plan.nstamps \
                and not has_resource:
            # Resource{attributes: stamps}, as one field 1
            mark = st.scratch.n = 0
            for i in range(plan.nstamps):
                if put_stamp_attr(st, &st.scratch, &plan.stamps[i]) < 0:
                    return 0
                st.counts[plan.stamps[i].stamp_slot] += 1
            mark = st.arena.n
            if buf_len_field(st, &st.arena, 1, st.scratch.p, st.scratch.n) < 0:
                return 0
            delta += st.arena.n - mark
            add_edit(st, end, end, mark, -1)
    return delta


cdef Py_ssize_t prefix_edit(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                            Py_ssize_t d, Py_ssize_t at) noexcept:
    """Re-encode the length prefix of a sub-message whose content changed size by d."""
    cdef Py_ssize_t len_pos = tag_pos + tag_size(st, tag_pos)
    cdef Py_ssize_t mark = st.arena.n
    if buf_varint(st, &st.arena, <uint64_t>(ve - vs + d)) < 0:
        return 0
    cdef Py_ssize_t nl = st.arena.n - mark
    if add_edit(st, len_pos, vs, mark, at) < 0:
        return 0
    return d + nl - (vs - len_pos)


cdef Py_ssize_t submsg(St* st, int t, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                       int active) noexcept:
    cdef Py_ssize_t at = st.nedits
    cdef Py_ssize_t d = walk(st, t, vs, ve, active)
    if d == 0 or st.err:
        return 0
    return prefix_edit(st, tag_pos, vs, ve, d, at)


cdef Py_ssize_t scan_string(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                            uint32_t fn) noexcept:
    cdef CPlan* plan = st.plan
    cdef const unsigned char* s = st.data + vs
    cdef int n = find_pans_c(st, s, ve - vs)
    cdef int k
    cdef Py_ssize_t last, mark
    if n <= 0:
        return 0
    st.counts[plan.det_slot] += n
    if plan.det_action == ACT_MASK:
        mask_edit(st, vs, ve, n)
        return 0
    st.scratch.n = 0
    if plan.det_action == ACT_REDACT:
        if buf_put(st, &st.scratch, plan.redaction, plan.rlen) < 0:
            return 0
    else:
        last = 0
        for k in range(n):
            if buf_put(st, &st.scratch, s + last, st.pans[k].i - last) < 0:
                return 0
            if put_hmac(st, &st.scratch, st.pans[k].digits, st.pans[k].nd) < 0:
                return 0
            last = st.pans[k].j
        if buf_put(st, &st.scratch, s + last, (ve - vs) - last) < 0:
            return 0
    mark = st.arena.n
    if buf_len_field(st, &st.arena, fn, st.scratch.p, st.scratch.n) < 0:
        return 0
    cdef Py_ssize_t rl = st.arena.n - mark
    if add_edit(st, tag_pos, ve, mark, -1) < 0:
        return 0
    return rl - (ve - tag_pos)


cdef int kv_key(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* ks,
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


cdef inline unsigned char lower(unsigned char c) noexcept:
    return c + 32 if 65 <= c <= 90 else c


cdef bint glob_match(const unsigned char* p, Py_ssize_t pn, const unsigned char* s,
                     Py_ssize_t sn) noexcept:
    """ASCII case-insensitive glob: * any run, ? one byte (p is lowercase)."""
    cdef Py_ssize_t pi = 0, si = 0, star = -1, mark = 0
    while si < sn:
        if pi < pn and (p[pi] == 63 or (p[pi] != 42 and p[pi] == lower(s[si]))):
            pi += 1
            si += 1
        elif pi < pn and p[pi] == 42:
            star = pi
            mark = si
            pi += 1
        elif star >= 0:
            pi = star + 1
            mark += 1
            si = mark
        else:
            return False
    while pi < pn and p[pi] == 42:
        pi += 1
    return pi == pn


cdef inline bint eq_lower(const unsigned char* s, const unsigned char* lit,
                          Py_ssize_t n) noexcept:
    cdef Py_ssize_t k
    for k in range(n):
        if lower(s[k]) != lit[k]:
            return False
    return True


cdef inline bint contains_lower(const unsigned char* key, Py_ssize_t kn,
                                const unsigned char* lit, Py_ssize_t ln) noexcept:
    cdef Py_ssize_t k
    for k in range(kn - ln + 1):
        if lower(key[k]) == lit[0] and eq_lower(key + k, lit, ln):
            return True
    return False


cdef bint rule_matches(Rule* r, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef Py_ssize_t k
    if kn < r.minlen:
        return False
    if r.is_glob == G_EXACT:
        return r.plen == kn and eq_lower(key, r.pat, kn)
    if r.is_glob == G_CONTAINS:
        return contains_lower(key, kn, r.lit, r.llen)
    if r.is_glob == G_PREFIX:
        return eq_lower(key, r.lit, r.llen)
    if r.is_glob == G_SUFFIX:
        return eq_lower(key + kn - r.llen, r.lit, r.llen)
    if r.nlen and not contains_lower(key, kn, r.need, r.nlen):
        return False
    return glob_match(r.pat, r.plen, key, kn)


# Which rule (if any) matched a key, remembered per plan: the same few keys come back in
# every item, and a plan of the shipped PCI policy has ~180 rules to try. Direct-mapped and
# fixed in size (64 KiB for all plans); a slot names its plan by id, so a slot left by a freed
# plan never answers for another. Used with the GIL held only (the rewriter never drops it).
cdef enum:
    KEY_SLOTS = 1024
    KEY_MAX = 48

cdef struct KeySlot:
    uint64_t plan_id
    uint32_t hash
    int32_t rule
    int32_t klen
    unsigned char key[KEY_MAX]

cdef KeySlot _KEY_CACHE[KEY_SLOTS]


cdef inline uint32_t key_hash(const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    for i in range(kn):
        h = (h ^ key[i]) * 16777619u
    return h


cdef Rule* scan_rules(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef int i
    for i in range(plan.nrules):
        if rule_matches(&plan.rules[i], key, kn):
            return &plan.rules[i]
    return NULL


cdef Rule* match_rule(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef uint32_t h
    cdef KeySlot* slot
    cdef Rule* rule
    if kn > KEY_MAX or plan.nrules < 4:
        return scan_rules(plan, key, kn)
    h = key_hash(key, kn) ^ <uint32_t>(plan.id * 2654435761u)
    slot = &_KEY_CACHE[h & (KEY_SLOTS - 1)]
    if slot.plan_id == plan.id and slot.hash == h and slot.klen == kn and memcmp(slot.key, key, kn) == 0:
        return NULL if slot.rule < 0 else &plan.rules[slot.rule]
    rule = scan_rules(plan, key, kn)
    slot.plan_id = plan.id
    slot.hash = h
    slot.klen = <int32_t>kn
    slot.rule = -1 if rule == NULL else <int32_t>(rule - plan.rules)
    memcpy(slot.key, key, kn)
    return rule


cdef int kv_scalar(St* st, Py_ssize_t vs, Py_ssize_t ve, int scan) noexcept:
    """Fast path of an attribute no rule matched whose values hold no array or map.

    Masks card numbers in its string values in place (the length stays). Returns 1 when
    handled, 0 when the value nests (the caller walks it), -1 on error. Errors are found
    in the same order as the full walk finds them.
    """
    cdef Py_ssize_t pos = vs, p, tag_pos, vtag
    cdef Field f, g
    cdef int n
    cdef Py_ssize_t ss[8]
    cdef Py_ssize_t se[8]
    cdef int ns = 0, m
    # pass 1: framing, and is any value an array or a map? remember the strings
    while pos < ve:
        tag_pos = pos
        if next_field(st, pos, ve, KV, &f) < 0:
            return -1
        pos = f.ve
        if f.fn != 2:
            continue
        if f.wt != 2:
            return fail(st, E_WRONG_WT, KV, f.fn, f.wt, tag_pos)
        p = f.vs
        while p < f.ve:
            vtag = p
            if next_field(st, p, f.ve, ANY, &g) < 0:
                return -1
            p = g.ve
            if g.fn == 5 or g.fn == 6:
                return 0
            if g.fn == 1:
                if g.wt != 2:
                    return fail(st, E_WRONG_WT, ANY, g.fn, g.wt, vtag)
                if ns == 8:
                    return 0
                ss[ns] = g.vs
                se[ns] = g.ve
                ns += 1
    if not scan:
        return 1
    # pass 2: scan the strings
    for m in range(ns):
        n = find_pans_c(st, st.data + ss[m], se[m] - ss[m])
        if n < 0:
            return -1
        if n:
            st.counts[st.plan.det_slot] += n
            if mask_edit(st, ss[m], se[m], n) < 0:
                return -1
    return 1


cdef Py_ssize_t kv(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                   int active) noexcept:
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t ks, ke, at, d
    cdef Rule* rule
    cdef int r
    if not active or not plan.nrules:
        if active and plan.det_action == ACT_MASK:
            r = kv_scalar(st, vs, ve, 1)
            if r != 0:
                return 0
        return submsg(st, KV, tag_pos, vs, ve, active and plan.det_action != 0)
    if kv_key(st, vs, ve, &ks, &ke) < 0:
        return 0
    rule = match_rule(plan, st.data + ks, ke - ks)
    if rule == NULL:
        if plan.det_action == ACT_MASK or plan.det_action == 0:
            r = kv_scalar(st, vs, ve, plan.det_action != 0)
            if r != 0:
                return 0
        return submsg(st, KV, tag_pos, vs, ve, 1)
    walk(st, KV, vs, ve, 0)
    if st.err:
        return 0
    st.counts[rule.slot] += 1  # a `keep` (an exemption) is counted too: each use is audited
    if rule.action == ACT_KEEP:
        return 0
    if rule.action == ACT_DROP:
        add_edit(st, tag_pos, ve, st.arena.n, -1)
        return -(ve - tag_pos)
    at = st.nedits
    d = replace_value(st, vs, ve, rule.action)
    if d == 0 or st.err:
        return 0
    return prefix_edit(st, tag_pos, vs, ve, d, at)


cdef int any_kind(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* ks, Py_ssize_t* ke,
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


cdef int last_value(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t* tp, Py_ssize_t* s,
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


cdef int put_int_text(St* st, Buf* b, uint64_t v, int mask) noexcept:
    """Append the decimal text of int64 v (digits but the last four masked when mask)."""
    cdef unsigned char tmp[24]
    cdef int n = 0, i
    cdef int64_t sv = <int64_t>v
    cdef uint64_t u
    cdef bint neg = sv < 0
    u = (<uint64_t>(-(sv + 1))) + 1 if neg else <uint64_t>sv
    while True:
        tmp[23 - n] = <unsigned char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    if neg:
        tmp[23 - n] = 45
        n += 1
    if mask:
        mask_digits(tmp, 24 - n, 24)
    return buf_put(st, b, &tmp[24 - n], n)


cdef Py_ssize_t replace_value(St* st, Py_ssize_t vs, Py_ssize_t ve, int action) noexcept:
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t delta = 0
    cdef Py_ssize_t tag_pos = ve, s = ve, e = ve, ks = ve, ke = ve, mark, pos
    cdef uint64_t kvv = 0
    cdef int kind = 0
    cdef int found = last_value(st, vs, ve, &tag_pos, &s, &e, 1, &delta)
    cdef Field f
    if found < 0:
        return 0
    if found:
        kind = any_kind(st, s, e, &ks, &ke, &kvv)
        if kind < 0:
            return 0
    st.scratch.n = 0
    if action == ACT_REDACT:
        if buf_put(st, &st.scratch, plan.redaction, plan.rlen) < 0:
            return 0
    elif action == ACT_HASH:
        if kind == 1 or kind == 7:
            if put_hmac(st, &st.scratch, st.data + ks, ke - ks) < 0:
                return 0
        elif kind == 3:
            mark = st.arena.n
            if put_int_text(st, &st.arena, kvv, 0) < 0:
                return 0
            if put_hmac(st, &st.scratch, st.arena.p + mark, st.arena.n - mark) < 0:
                return 0
            st.arena.n = mark
        else:
            if put_hmac(st, &st.scratch, st.data + s, e - s) < 0:
                return 0
    else:
        if kind == 1:
            pos = s
            while pos < e:
                if next_field(st, pos, e, ANY, &f) < 0:
                    return 0
                if f.fn == 1 and f.wt == 2 and mask_edit(st, f.vs, f.ve, -1) < 0:
                    return 0
                pos = f.ve
            return delta
        if kind == 0 or kind == 2:
            return delta
        if kind == 3:
            if put_int_text(st, &st.scratch, kvv, 1) < 0:
                return 0
        elif buf_put(st, &st.scratch, plan.redaction, plan.rlen) < 0:
            return 0
    # value field 2 { string_value field 1 { scratch } }
    mark = st.arena.n
    if buf_varint(st, &st.arena, 0x12) < 0 or \
            buf_varint(st, &st.arena, len_field_size(1, st.scratch.n)) < 0 or \
            buf_len_field(st, &st.arena, 1, st.scratch.p, st.scratch.n) < 0:
        return 0
    cdef Py_ssize_t rl = st.arena.n - mark
    if add_edit(st, tag_pos, e, mark, -1) < 0:
        return 0
    return delta + rl - (e - tag_pos)


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


cdef int only_string(St* st, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    cdef Py_ssize_t pos = vs
    cdef Field f
    while pos < ve:
        if next_field(st, pos, ve, ANY, &f) < 0:
            return -1
        if f.fn != 1:
            return 0
        pos = f.ve
    return 1


cdef Py_ssize_t stamp_kv(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t ks, ke, s = 0, e = 0, xs, xe, mark
    cdef uint64_t kvv
    cdef int kind, nvalues = 0, only
    cdef Stamp* stamp
    cdef Field f
    cdef Py_ssize_t pos
    if kv_key(st, vs, ve, &ks, &ke) < 0:
        return 0
    stamp = find_stamp(plan, st.data + ks, ke - ks)
    if stamp == NULL:
        return kv(st, tag_pos, vs, ve, 1)
    walk(st, KV, vs, ve, 0)
    if st.err:
        return 0
    pos = vs
    while pos < ve:
        if next_field(st, pos, ve, KV, &f) < 0:
            return 0
        if f.fn == 2 and f.wt == 2:
            nvalues += 1
            s = f.vs
            e = f.ve
        pos = f.ve
    if nvalues:
        kind = any_kind(st, s, e, &xs, &xe, &kvv)
        if kind < 0:
            return 0
        if nvalues == 1 and kind == 1 and xe - xs == stamp.vlen and \
                memcmp(st.data + xs, stamp.val, stamp.vlen) == 0:
            only = only_string(st, s, e)
            if only < 0:
                return 0
            if only:
                return 0
    st.counts[stamp.stamp_slot] += 1
    mark = st.arena.n
    if put_stamp_attr(st, &st.arena, stamp) < 0:
        return 0
    cdef Py_ssize_t rl = st.arena.n - mark
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


# ---- sampling ----

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


cdef void parse_ts(const unsigned char* s, Py_ssize_t n, TS* ts) noexcept:
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


cdef inline bint all_lhex(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if not is_lhex(p[i]):
            return False
    return True


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


cdef Py_ssize_t span(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    cdef CPlan* plan = st.plan
    cdef const unsigned char* buf = st.data
    cdef Py_ssize_t tid_s = vs, tid_e = vs, ts_s = vs, ts_e = vs, ts_last = -1
    cdef Py_ssize_t pos = vs, ftag, p, k
    cdef uint64_t status_code = 0, randomness = 0, threshold
    cdef Field f, g
    cdef TS ts
    cdef int slot, new_ts = 0
    cdef Py_ssize_t* na
    cdef Py_ssize_t ks, ke
    cdef Py_ssize_t d
    cdef int* fmap = FMAP[SPAN]
    cdef unsigned char c
    # this first pass also makes validate()'s checks, field by field, until one fails (then
    # checked = 0 and its error is cleared): a dropped span that passed them all needs no
    # second walk. The errors reported stay the twin's: a span that failed them is walked
    # again, and the keys of its attributes are read where the twin reads them.
    cdef bint checked = 1
    st.items_in += 1
    st.nattrs = 0
    while pos < ve:
        ftag = pos
        c = buf[pos]
        if (c == 0x39 or c == 0x41) and ve - pos >= 9:
            pos += 9  # start or end time (fixed64): nothing to check or note
            continue
        if next_field(st, pos, ve, SPAN, &f) < 0:
            return 0
        pos = f.ve
        if f.fn == 9 and f.wt == 2 and plan.keep_attrs:
            # remember every attribute for the keep rules: (start, end, key start, key end)
            ks = -1
            ke = -1
            if checked and validate_kv(st, f.vs, f.ve, &ks, &ke) < 0:
                st.err = E_NONE
                checked = 0
                ks = -1
            if st.nattrs + 4 > st.capattrs:
                na = <Py_ssize_t*>PyMem_Realloc(
                    st.attrs, sizeof(Py_ssize_t) * (st.capattrs * 2 + 32))
                if na == NULL:
                    fail(st, E_MEMORY, 0, 0, 0, 0)
                    return 0
                st.attrs = na
                st.capattrs = st.capattrs * 2 + 32
            st.attrs[st.nattrs] = f.vs
            st.attrs[st.nattrs + 1] = f.ve
            st.attrs[st.nattrs + 2] = ks
            st.attrs[st.nattrs + 3] = ke
            st.nattrs += 4
            continue
        if checked and check_field(st, SPAN, fmap[f.fn] if f.fn < MAXF else 0, &f, ftag) < 0:
            st.err = E_NONE
            checked = 0
        if f.wt != 2:
            continue
        if f.fn == 1:
            tid_s = f.vs
            tid_e = f.ve
        elif f.fn == 3:
            ts_s = f.vs
            ts_e = f.ve
            ts_last = ftag
        elif f.fn == 15:
            p = f.vs
            while p < f.ve:
                if next_field(st, p, f.ve, STATUS, &g) < 0:
                    return 0
                if g.fn == 3 and g.wt == 0:
                    status_code = g.v
                p = g.ve
    parse_ts(buf + ts_s, ts_e - ts_s, &ts)
    if ts.rv >= 0:
        randomness = <uint64_t>ts.rv
    else:
        k = tid_e - 7 if tid_e - tid_s > 7 else tid_s
        while k < tid_e:
            randomness = (randomness << 8) | buf[k]
            k += 1
    threshold = plan.threshold
    if ts.th >= 0 and <uint64_t>ts.th > threshold:
        threshold = <uint64_t>ts.th
    if threshold < MAX_THRESHOLD and randomness >= threshold:
        if build_ts(st, &st.scratch, buf + ts_s, &ts, 1, threshold) < 0:
            return 0
        new_ts = 1
    else:
        slot = keep_rule(st, status_code)
        if st.err:
            return 0
        if slot < 0:
            st.counts[plan.sample_slot] += 1
            st.sampled_out += 1
            if not checked:
                walk(st, SPAN, vs, ve, 0)
                if st.err:
                    return 0
            add_edit(st, tag_pos, ve, st.arena.n, -1)
            return -(ve - tag_pos)
        st.counts[slot] += 1
        if ts.has_th:
            if build_ts(st, &st.scratch, buf + ts_s, &ts, 0, 0) < 0:
                return 0
            new_ts = 1
    if new_ts and st.scratch.n == ts_e - ts_s and \
            memcmp(st.scratch.p, buf + ts_s, st.scratch.n) == 0:
        new_ts = 0
    if new_ts:
        # the new value lives in the arena until the span is walked (scratch is reused)
        k = st.arena.n
        if buf_put(st, &st.arena, st.scratch.p, st.scratch.n) < 0:
            return 0
        st.has_ts_new = 1
        st.ts_new_len = st.arena.n - k
        st.ts_last = ts_last
        # walk() appends to the arena, which may move it: keep the offset, copy out below
        d = span_walk(st, tag_pos, vs, ve, k)
        st.has_ts_new = 0
        st.ts_last = -1
        return d
    return submsg(st, SPAN, tag_pos, vs, ve, 1)


cdef Py_ssize_t span_walk(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                          Py_ssize_t ts_off) noexcept:
    """Walk a kept span whose tracestate changes (its new value at arena[ts_off:])."""
    cdef unsigned char* copy = <unsigned char*>PyMem_Malloc(st.ts_new_len + 1)
    cdef Py_ssize_t d
    if copy == NULL:
        fail(st, E_MEMORY, 0, 0, 0, 0)
        return 0
    memcpy(copy, st.arena.p + ts_off, st.ts_new_len)
    st.arena.n = ts_off
    st.ts_new = copy
    d = submsg(st, SPAN, tag_pos, vs, ve, 1)
    st.ts_new = NULL
    PyMem_Free(copy)
    return d


cdef int keep_rule(St* st, uint64_t status_code) noexcept:
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


cdef bint keep_matches(St* st, Keep* k, int kind, Py_ssize_t ks, Py_ssize_t ke,
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


# ---- refusal ----

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


# ---- the public API ----

cdef void st_init(St* st, const unsigned char* data, Py_ssize_t size) noexcept:
    st.data = data
    st.size = size
    st.edits = NULL
    st.nedits = 0
    st.capedits = 0
    st.arena.p = NULL
    st.arena.n = 0
    st.arena.cap = 0
    st.scratch.p = NULL
    st.scratch.n = 0
    st.scratch.cap = 0
    st.pans = NULL
    st.cappans = 0
    st.attrs = NULL
    st.nattrs = 0
    st.capattrs = 0
    st.plan = &_NULL_BOX.p
    st.box = <void*>_NULL_BOX
    st.counts = NULL
    st.dry = 0
    st.depth = 0
    st.max_depth = MAX_NESTING
    st.items_in = 0
    st.sampled_out = 0
    st.ts_new = NULL
    st.ts_new_len = 0
    st.has_ts_new = 0
    st.ts_last = -1
    st.err = E_NONE


cdef void st_free(St* st) noexcept:
    PyMem_Free(st.edits)
    PyMem_Free(st.arena.p)
    PyMem_Free(st.scratch.p)
    PyMem_Free(st.pans)
    PyMem_Free(st.attrs)
    PyMem_Free(st.counts)


cdef bytes _as_bytes(data):
    if type(data) is bytes:
        return data
    return bytes(data)


cdef int st_open(St* st, object data, Py_buffer* view) except -1:
    """Point st at the bytes of data, in place: bytes, bytearray or a contiguous memoryview (a
    request body the HTTP/1.1 server did not copy); a copy of any other buffer (as the twin
    reads it). PyBuffer_Release(view) after st_free(st)."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except BufferError:  # not contiguous
        PyObject_GetBuffer(bytes(memoryview(data)), view, PyBUF_SIMPLE)  # the view keeps it alive
    st_init(st, <const unsigned char*>view.buf, view.len)
    return 0


cdef bytes _unchanged(St* st, object data):
    """The request, unchanged, as bytes: data itself when it is bytes."""
    if type(data) is bytes:
        return data
    return PyBytes_FromStringAndSize(<const char*>st.data, st.size)


cdef list _resource_ranges(St* st, int t):
    cdef Py_ssize_t pos = 0, tag_pos
    cdef Field f
    out = []
    while pos < st.size:
        tag_pos = pos
        if next_field(st, pos, st.size, t, &f) < 0:
            raise _error(st)
        pos = f.ve
        if f.fn == 1:
            if f.wt != 2:
                fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
                raise _error(st)
            out.append((tag_pos, f.vs, f.ve))
    return out


def count_items(signal, data):
    """Validate the request and count its spans / data points / log records."""
    cdef Py_buffer view
    cdef St st
    st_open(&st, data, &view)
    try:
        walk(&st, REQUEST_TYPE[signal], 0, st.size, 0)
        if st.err:
            raise _error(&st)
        return st.items_in
    finally:
        st_free(&st)
        PyBuffer_Release(&view)


cdef bytes _resource_bytes(St* st, int t, Py_ssize_t s, Py_ssize_t e):
    cdef Py_ssize_t pos = s
    cdef Field f
    parts = []
    while pos < e:
        if next_field(st, pos, e, t, &f) < 0:
            raise _error(st)
        if f.fn == 1 and f.wt == 2:
            parts.append(PyBytes_FromStringAndSize(<const char*>st.data + f.vs, f.ve - f.vs))
        pos = f.ve
    return b"".join(parts)


cdef int count_quickly(St* st, int t, Py_ssize_t start, Py_ssize_t end, bint descend) noexcept:
    """Count the items in data[start:end], checking the framing of the messages that hold them
    and all of the Resource; descend=0: only this message's framing and the Resource."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t tag_pos
    cdef Field f
    cdef int code, sub
    cdef int* fmap = FMAP[t]
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, t, &f) < 0:
            return -1
        pos = f.ve
        code = fmap[f.fn] if f.fn < MAXF else 0
        if code == 0:
            continue
        if f.wt != 2:
            return fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
        if code < F_SUB:
            continue
        sub = code - F_SUB
        if IS_ITEM[sub]:
            st.items_in += 1
        elif HOLDS[sub]:
            if descend and count_quickly(st, sub, f.vs, f.ve, 1) < 0:
                return -1
        elif sub == RESOURCE:
            # checked whole: the policy engine decodes its attributes before rewrite() runs
            if validate(st, RESOURCE, f.vs, f.ve) < 0:
                return -1
    return 0


def split_resources(signal, data, bint validate=True, bint count=True):
    """One ResourceInfo per top-level resource, in order.

    ``validate=False`` checks only the framing down to the items (enough to count them), not
    the items' insides: for a caller that hands the request to rewrite() next, which checks
    every byte. ``count=False`` (with ``validate=False``) does not go down to the items either:
    it checks the framing of the resources and all of each Resource, and every ``items`` is 0.
    """
    cdef Py_buffer view
    cdef St st
    cdef int t = RS_TYPE[signal]
    cdef Py_ssize_t before
    st_open(&st, data, &view)
    try:
        out = []
        for index, (_tag, s, e) in enumerate(_resource_ranges(&st, REQUEST_TYPE[signal])):
            before = st.items_in
            if validate:
                walk(&st, t, s, e, 0)
            else:
                count_quickly(&st, t, s, e, count)
            if st.err:
                raise _error(&st)
            key = _resource_bytes(&st, t, s, e)
            out.append(ResourceInfo(index, key, st.items_in - before))
        return out
    finally:
        st_free(&st)
        PyBuffer_Release(&view)


def rewrite(signal, data, plans):
    """Apply plans (aligned with split_resources) to the request data (bytes-like, read in
    place); the result's data is bytes."""
    cdef Py_buffer view
    cdef St st
    cdef int t = RS_TYPE[signal]
    cdef int i, maxslots = 1, r
    cdef _PlanBox box
    cdef Py_ssize_t delta = 0, before_items, before_sampled, n, tag_pos, s, e
    cdef Py_ssize_t rejected = 0, k
    cdef list boxes = [_box(p) for p in plans]
    cdef bint all_noop = True
    for box in boxes:
        if box.p.nslots > maxslots:
            maxslots = box.p.nslots
        if not box.p.noop:
            all_noop = False
    st_open(&st, data, &view)
    try:
        ranges = _resource_ranges(&st, REQUEST_TYPE[signal])
        if len(ranges) != len(boxes):
            raise ValueError(f"{len(boxes)} plans for {len(ranges)} resources")
        if all_noop:
            walk(&st, REQUEST_TYPE[signal], 0, st.size, 0)
            if st.err:
                raise _error(&st)
            return RewriteResult(_unchanged(&st, data), st.items_in, st.items_in, 0, 0, (), {})
        st.counts = <int64_t*>PyMem_Malloc(sizeof(int64_t) * maxslots)
        if st.counts == NULL:
            raise MemoryError()
        counts = {}
        refusals = []
        for i in range(len(boxes)):
            box = boxes[i]
            tag_pos, s, e = ranges[i]
            st.plan = &box.p
            st.box = <void*>box
            st.dry = box.p.dry_run
            for k in range(box.p.nslots):
                st.counts[k] = 0
            before_items = st.items_in
            before_sampled = st.sampled_out
            r = -1 if box.p.noop else refusal(&st, t, s, e)
            if r == -2 or st.err:
                raise _error(&st)
            if r != -1:
                walk(&st, t, s, e, 0)
                if st.err:
                    raise _error(&st)
                n = st.items_in - before_items
                if r == -3:
                    st.counts[box.p.refuse_slot] += n
                    reason = box.compiled.refuse_reason
                else:
                    st.counts[box.p.stamps[r].refuse_slot] += n
                    reason = box.compiled.stamps[r].reason
                if not box.p.dry_run:
                    rejected += n
                    refusals.append(reason)
                    add_edit(&st, tag_pos, e, st.arena.n, -1)
                    delta -= e - tag_pos
            else:
                delta += submsg(&st, t, tag_pos, s, e, not box.p.noop)
            if st.err:
                if st.err == E_PYTHON:
                    raise RuntimeError("hashing a value failed")
                raise _error(&st)
            if box.p.dry_run:
                st.sampled_out = before_sampled
            for k in range(box.p.nslots):
                if st.counts[k]:
                    key = box.compiled.slots[k]
                    counts[key] = counts.get(key, 0) + st.counts[k]
        out = _splice(&st, data)
        sampled = st.sampled_out
        return RewriteResult(out, st.items_in, st.items_in - rejected - sampled, rejected,
                             sampled, tuple(refusals), counts)
    finally:
        st_free(&st)
        PyBuffer_Release(&view)


cdef bytes _splice(St* st, object data):
    cdef const unsigned char* src = st.data
    cdef Py_ssize_t out_len = st.size, i, pos = 0, n
    cdef Edit* e
    cdef bytes out
    cdef unsigned char* o
    if st.nedits == 0:
        return _unchanged(st, data)
    for i in range(st.nedits):
        out_len += st.edits[i].rlen - (st.edits[i].end - st.edits[i].start)
    out = PyBytes_FromStringAndSize(NULL, out_len)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(st.nedits):
        e = &st.edits[i]
        n = e.start - pos
        memcpy(o, src + pos, n)
        o += n
        memcpy(o, st.arena.p + e.roff, e.rlen)
        o += e.rlen
        pos = e.end
    memcpy(o, src + pos, st.size - pos)
    return out


def find_pans(s):
    """Card numbers in s: (start, end, digits), by the rule in docs/rewriter.md."""
    cdef bytes b = _as_bytes(s)
    cdef St st
    cdef int n, k
    st_init(&st, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    try:
        n = find_pans_c(&st, st.data, st.size)
        if n < 0:
            raise MemoryError()
        return [(st.pans[k].i, st.pans[k].j,
                 PyBytes_FromStringAndSize(<const char*>st.pans[k].digits, st.pans[k].nd))
                for k in range(n)]
    finally:
        st_free(&st)
