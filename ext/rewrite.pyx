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
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

from sidecar._ext.cards cimport find_pans_c, mask_digits, may_hold_pan
from sidecar._ext.sampling cimport TS, build_ts, keep_rule, parse_ts
from sidecar._ext.stamps cimport apply_stamp, find_stamp, insert_stamps, new_resource, refusal
from sidecar._ext.state cimport *
from sidecar._ext.wire cimport *

import hmac as _hmac

from sidecar.rewrite._common import (
    HASH_PREFIX_BYTES,
    MAX_GROWTH,
    MalformedRequest,
    ResourceInfo,
    RewriteResult,
    RewriteTooLarge,
    compile_plan,
    decode_attributes,
)
from sidecar.rewrite._schema import (
    ALLOWED,
    ALLOWED_NAMES,
    FIELDS,
    HOLDS_ITEMS,
    ITEMS,
    MAX_NESTING,
    NALLOWED,
    NAMES,
    REQUEST_TYPE,
    RS_TYPE,
)
from sidecar.rewrite._schema import BUCKETS as _BUCKETS
from sidecar.rewrite._schema import EDP as _EDP
from sidecar.rewrite._schema import SDP as _SDP
from sidecar.rewrite.plan import Plan

from sidecar._ext.cards import find_pans  # the detector's Python API, also here as before

__all__ = ["IMPLEMENTATION", "MalformedRequest", "ResourceInfo", "RewriteResult", "RewriteTooLarge",
           "count_items", "count_resources", "find_pans", "rewrite", "split_resources",
           "unknown_field", "without_unknown_fields"]

IMPLEMENTATION = "cython"

# ---- schema (copied from sidecar/rewrite/_schema.py at import) ----

cdef uint64_t MAX_THRESHOLD = (<uint64_t>1) << 56
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
    # the codes sidecar/_ext/state.pxd declares must be the schema's and _common's
    import sidecar.rewrite._common as common
    import sidecar.rewrite._schema as schema
    c_codes = {"RS_SPANS": RS_SPANS, "RS_METRICS": RS_METRICS, "RS_LOGS": RS_LOGS,
               "RESOURCE": RESOURCE, "SPAN": SPAN, "STATUS": STATUS, "KV": KV, "ANY": ANY,
               "ARRAY": ARRAY, "KVLIST": KVLIST, "F_STR": F_STR, "F_KV": F_KV, "F_TS": F_TS,
               "F_SUB": F_SUB}
    c_plan = {"ACT_DROP": ACT_DROP, "ACT_REDACT": ACT_REDACT, "ACT_HASH": ACT_HASH,
              "ACT_MASK": ACT_MASK, "ACT_KEEP": ACT_KEEP, "KEEP_STATUS_ERROR": KEEP_STATUS_ERROR,
              "KEEP_EQUALS": KEEP_EQUALS, "KEEP_AT_LEAST": KEEP_AT_LEAST, "VT_STR": VT_STR,
              "VT_BOOL": VT_BOOL, "VT_INT": VT_INT, "VT_DOUBLE": VT_DOUBLE}
    for module, codes in ((schema, c_codes), (common, c_plan)):
        for name, value in codes.items():
            if getattr(module, name) != value:
                raise RuntimeError(f"sidecar/_ext/state.pxd: {name} is {value}, the twin's is"
                                   f" {getattr(module, name)}")
    if len(schema.NAMES) != NTYPES or common.MAX_THRESHOLD != MAX_THRESHOLD \
            or common.EDIT_BYTES != EDIT_BYTES:
        raise RuntimeError("sidecar/_ext/state.pxd does not match sidecar/rewrite/_schema.py")


_load_schema()

# ---- the egress allowlist (sidecar/rewrite/_allowlist.py is the twin) ----

DEF ALLOWED_TYPES = 33
cdef int AMASK[ALLOWED_TYPES][MAXF]
cdef int ASUB[ALLOWED_TYPES][MAXF]
cdef int T_BUCKETS = _BUCKETS, T_EDP = _EDP, T_SDP = _SDP
cdef int NEST_MAX = MAX_NESTING


def _load_allowed():
    cdef int t, f
    if NALLOWED != ALLOWED_TYPES:
        raise RuntimeError("ext/rewrite.pyx: ALLOWED_TYPES does not match sidecar/rewrite/_schema.py")
    for t in range(ALLOWED_TYPES):
        for f in range(MAXF):
            AMASK[t][f] = 0
            ASUB[t][f] = -1
    for t, fmap in ALLOWED.items():
        for f, (mask, sub) in fmap.items():
            if f >= MAXF:
                raise RuntimeError("allowed field number out of range for the C table")
            AMASK[t][f] = mask
            ASUB[t][f] = sub


_load_allowed()


cdef inline int named(int t) noexcept:
    """The walk's type to name in a parse error (its messages know the walk's types only)."""
    if t < T_BUCKETS:
        return t
    return T_EDP if t == T_BUCKETS else T_SDP


cdef struct Unknown:
    int t  # the message holding it
    uint32_t fn
    int wt
    int deep  # 1: a sub-message (of type t) nested too deep


cdef inline int allowed(int t, Field* f, int* sub) noexcept:
    """Is field f of a message of type t OTLP's? ``sub``: the sub-message type to enter, or -1."""
    if f.fn >= MAXF or not (AMASK[t][f.fn] & (1 << f.wt)):
        return 0
    sub[0] = ASUB[t][f.fn]
    return 1


cdef inline bint too_deep(int sub, int nest) noexcept:
    """Values nest (arrays, maps) at most MAX_NESTING levels, as the rewriter counts them."""
    return (sub == ARRAY or sub == KVLIST) and nest >= NEST_MAX


cdef inline int nested(int sub, int nest) noexcept:
    return nest + 1 if sub == ARRAY or sub == KVLIST else nest


cdef Py_ssize_t first_unknown(St* st, int t, Py_ssize_t start, Py_ssize_t end, int nest,
                              Unknown* u) noexcept:
    """Offset of the first field in data[start:end] (a message of type t, and below) that OTLP
    does not define, -1 if none, -2 if it does not parse (st.err)."""
    cdef Py_ssize_t pos = start, tag_pos, found, ks, ke
    cdef Field f
    cdef int sub
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, named(t), &f) < 0:
            return -2
        pos = f.ve
        if not allowed(t, &f, &sub):
            u.t, u.fn, u.wt, u.deep = t, f.fn, f.wt, 0
            return tag_pos
        if sub >= 0:
            if sub == KV and simple_kv(st.data, f.vs, f.ve, &ks, &ke):
                continue  # the common attribute: every field of it is OTLP's
            if sub == ANY and one_string(st.data, f.vs, f.ve):
                continue  # the common log body
            if too_deep(sub, nest):
                u.t, u.fn, u.wt, u.deep = sub, f.fn, f.wt, 1
                return tag_pos
            found = first_unknown(st, sub, f.vs, f.ve, nested(sub, nest), u)
            if found != -1:
                return found
    return -1


# ---- the walk's own allowlist check (RewriteResult.maybe_unknown) ----

cdef inline void note_field(St* st, int t, Field* f) noexcept:
    """Field f of a message of type t, which the walk copies without walking it: note in the walk
    when it is not OTLP's, or holds a sub-message only the allowlist enters (buckets, quantiles)
    that has a field OTLP does not define or cannot be read (the pipeline's check of the output
    then names the error, as before). The twin: ``_allowlist.is_otlp``."""
    cdef Unknown u
    cdef int sub, err
    if st.unknown:
        return
    if f.fn >= MAXF or not (AMASK[t][f.fn] & (1 << f.wt)):
        st.unknown = 1
        return
    sub = ASUB[t][f.fn]
    if sub < 0:
        return
    if sub == ARRAY or sub == KVLIST:  # values the walk enters itself; their depth is not known here
        st.unknown = 1
        return
    err = st.err
    if first_unknown(st, sub, f.vs, f.ve, 0, &u) != -1:
        st.unknown = 1
    st.err = err  # a sub-message that does not parse: noted, the walk goes on


def unknown_field(signal, data):
    """Where the first field of ``data`` that OTLP does not define is (``field 1000 (wire type 2)
    of ResourceSpans at offset 12``), or None when every field is OTLP's."""
    cdef Py_buffer view
    cdef St st_
    cdef St* st = &st_
    cdef Unknown u
    cdef Py_ssize_t found
    st_open(st, data, &view)
    try:
        found = first_unknown(st, REQUEST_TYPE[signal], 0, st.size, 0, &u)
        if found == -2:
            raise error_of(st)
        if found == -1:
            return None
        if u.deep:
            return f"{ALLOWED_NAMES[u.t]} nested deeper than {MAX_NESTING} levels at offset {found}"
        return f"field {u.fn} (wire type {u.wt}) of {ALLOWED_NAMES[u.t]} at offset {found}"
    finally:
        st_free(st)
        PyBuffer_Release(&view)


cdef struct Sizes:
    Py_ssize_t* p
    Py_ssize_t n
    Py_ssize_t cap


cdef Py_ssize_t sizes_push(St* st, Sizes* sz) noexcept:
    """A new slot at the end of sz (its index), or -1 on memory error."""
    cdef Py_ssize_t* grown
    if sz.n == sz.cap:
        grown = <Py_ssize_t*>PyMem_Realloc(sz.p, sizeof(Py_ssize_t) * (sz.cap * 2 + 64))
        if grown == NULL:
            fail(st, E_MEMORY, 0, 0, 0, 0)
            return -1
        sz.p = grown
        sz.cap = sz.cap * 2 + 64
    sz.n += 1
    return sz.n - 1


cdef Py_ssize_t known_size(St* st, int t, Py_ssize_t start, Py_ssize_t end, int nest, Sizes* sz,
                           Py_ssize_t* dropped) noexcept:
    """First pass of without_unknown_fields: the size of data[start:end] (a message of type t)
    without the fields OTLP does not define, -1 on error. Each sub-message kept gets a slot in sz,
    in the order met: -1 when nothing in it is dropped (copied as it is), else its new size."""
    cdef Py_ssize_t pos = start, tag_pos, size = 0, slot, inner, before
    cdef Field f
    cdef int sub
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, named(t), &f) < 0:
            return -1
        pos = f.ve
        if not allowed(t, &f, &sub) or (sub >= 0 and too_deep(sub, nest)):
            dropped[0] += 1
            continue
        if sub < 0:
            size += f.ve - tag_pos
            continue
        slot = sizes_push(st, sz)
        if slot < 0:
            return -1
        before = dropped[0]
        inner = known_size(st, sub, f.vs, f.ve, nested(sub, nest), sz, dropped)
        if inner < 0:
            return -1
        if dropped[0] == before:
            sz.n = slot + 1  # its own slots are not needed: copied as it is
            sz.p[slot] = -1
            size += f.ve - tag_pos
        else:
            sz.p[slot] = inner
            size += varint_size((<uint64_t>f.fn << 3) | 2) + varint_size(<uint64_t>inner) + inner
    return size


cdef int write_known(St* st, int t, Py_ssize_t start, Py_ssize_t end, int nest, Sizes* sz,
                     Py_ssize_t* cursor, Buf* out) noexcept:
    """Second pass: write data[start:end] without the fields known_size dropped."""
    cdef Py_ssize_t pos = start, tag_pos, inner
    cdef Field f
    cdef int sub
    while pos < end:
        tag_pos = pos
        if next_field(st, pos, end, named(t), &f) < 0:
            return -1
        pos = f.ve
        if not allowed(t, &f, &sub) or (sub >= 0 and too_deep(sub, nest)):
            continue
        if sub >= 0:
            inner = sz.p[cursor[0]]
            cursor[0] += 1
            if inner >= 0:
                if buf_varint(st, out, (<uint64_t>f.fn << 3) | 2) < 0 or buf_varint(st, out, <uint64_t>inner) < 0:
                    return -1
                if write_known(st, sub, f.vs, f.ve, nested(sub, nest), sz, cursor, out) < 0:
                    return -1
                continue
        if buf_put(st, out, st.data + tag_pos, f.ve - tag_pos) < 0:
            return -1
    return 0


def without_unknown_fields(signal, data):
    """(``data`` with every field OTLP does not define dropped, sub-messages re-encoded around what
    they lose; how many fields were dropped). In two linear passes: the sizes, then the bytes."""
    cdef Py_buffer view
    cdef St st_
    cdef St* st = &st_
    cdef Sizes sz
    cdef Py_ssize_t size, dropped = 0, cursor = 0
    cdef int t = REQUEST_TYPE[signal]
    sz.p = NULL
    sz.n = 0
    sz.cap = 0
    st_open(st, data, &view)
    try:
        size = known_size(st, t, 0, st.size, 0, &sz, &dropped)
        if size < 0:
            raise error_of(st)
        if dropped == 0:
            return _unchanged(st, data), 0
        if buf_reserve(st, &st.arena, size) < 0 or write_known(st, t, 0, st.size, 0, &sz, &cursor,
                                                                 &st.arena) < 0:
            raise error_of(st)
        return PyBytes_FromStringAndSize(<const char*>st.arena.p, st.arena.n), dropped
    finally:
        PyMem_Free(sz.p)
        st_free(st)
        PyBuffer_Release(&view)

# ---- compiled plans in C ----

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
        self.p.rule_index = NULL
        self.p.bucket_start = NULL
        self.p.stamps = NULL
        self.p.keeps = NULL

    def __dealloc__(self):
        PyMem_Free(self.p.rules)
        PyMem_Free(self.p.rule_index)
        PyMem_Free(self.p.bucket_start)
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
        index_rules(&self.p)
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
    if code == 0:  # copied as it is: is it OTLP's?
        note_field(st, t, f)
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
    # fast path: a short key, then one short value holding one string, int, double or bool
    if simple_kv(st.data, start, end, ks, ke):
        return 0
    return validate_kv_fields(st, start, end, ks, ke)


cdef inline bint one_string(const unsigned char* d, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """Whether the AnyValue in d[vs:ve] is one string_value and nothing else."""
    cdef Py_ssize_t p = vs + 1
    cdef uint64_t n = 0
    cdef int shift = 0
    if ve - vs < 2 or d[vs] != 0x0A:
        return False
    while p < ve and shift < 35:
        n |= <uint64_t>(d[p] & 0x7F) << shift
        p += 1
        if d[p - 1] < 0x80:
            return <uint64_t>(ve - p) == n
        shift += 7
    return False


cdef inline bint simple_kv(const unsigned char* d, Py_ssize_t start, Py_ssize_t end, Py_ssize_t* ks,
                           Py_ssize_t* ke) noexcept:
    """Whether the KeyValue in d[start:end] is a short key, then one short value holding one
    string, int, double or bool, and nothing else (the common attribute); finds the key."""
    cdef Py_ssize_t p
    if end - start >= 4 and d[start] == 0x0A and d[start + 1] < 0x80:
        p = start + 2 + d[start + 1]
        if p + 2 <= end and d[p] == 0x12 and d[p + 1] < 0x80 and p + 2 + d[p + 1] == end \
                and scalar_value(d, p + 2, end):
            ks[0] = start + 2
            ke[0] = p
            return True
    return False


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
            else:
                note_field(st, KV, &f)
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
            else:
                note_field(st, ANY, &g)
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
        if code == 0:  # copied as it is: is it OTLP's?
            note_field(st, t, &f)
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
            elif active and plan.det_action:  # left as it is: a string like any other
                delta += scan_string(st, tag_pos, f.vs, f.ve, f.fn)
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
            delta += new_resource(st, end)  # Resource{attributes: stamps}
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
            if st.scratch.n > st.max_growth and not st.dry:  # its edit would be refused
                fail(st, E_GROWTH, 0, 0, 0, 0)
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
# fixed in size (72 KiB for all plans); a slot names its plan by id, so a slot left by a freed
# plan never answers for another. Used with the GIL held only (the rewriter never drops it).
cdef enum:
    KEY_BITS = 10
    KEY_SLOTS = 1 << KEY_BITS
    KEY_MAX = 48

cdef struct KeySlot:
    uint64_t plan_id
    uint32_t hash
    int32_t rule
    int32_t klen
    unsigned char key[KEY_MAX]

cdef KeySlot _KEY_CACHE[KEY_SLOTS]


cdef inline uint32_t key_hash(const unsigned char* key, Py_ssize_t kn) noexcept:
    """A hash of the key, eight bytes per step (a multiply per byte was a quarter of the time
    of a metrics request: attribute keys are 10-30 bytes)."""
    cdef uint64_t h = 0x9E3779B97F4A7C15u ^ <uint64_t>kn
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    cdef int k
    while i + 8 <= kn:
        memcpy(&w, key + i, 8)
        h = (h ^ w) * 0xFF51AFD7ED558CCDu
        h ^= h >> 32
        i += 8
    if i < kn:
        w = 0
        k = 0
        while i < kn:
            w |= (<uint64_t>key[i]) << k
            k += 8
            i += 1
        h = (h ^ w) * 0xFF51AFD7ED558CCDu
    # a multiply carries a byte's difference only upwards: fold the high bits down, multiply once
    # more, and take the top bits, which every byte reaches (keys that differ in their last bytes,
    # `field_1`, `field_2`, shared slots when the low bits picked them: 100 such keys took 75 of
    # 1,024 slots, 1,000 of the form `attribute.number.000123` 288)
    h ^= h >> 33
    return <uint32_t>((h * 0xC4CEB9FE1A85EC53u) >> 32)  # its high bits pick the slot


cdef inline bint same_key(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    """a[:n] == b[:n], eight bytes per step (keys are short: no call to memcmp)."""
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&x, a + i, 8)
        memcpy(&y, b + i, 8)
        if x != y:
            return False
        i += 8
    while i < n:
        if a[i] != b[i]:
            return False
        i += 1
    return True


cdef Rule* scan_rules(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef int i
    for i in range(plan.nrules):
        if rule_matches(&plan.rules[i], key, kn):
            return &plan.rules[i]
    return NULL


# The rules indexed by what a key must hold to match them, so that a key the cache above does
# not hold (a new key, one of many distinct keys, one longer than KEY_MAX) is tried against the
# few rules it could match, not all of them: each rule is in one bucket, and a key looks in the
# buckets of its own bytes. An exact key is in the bucket of its hash; a suffix (`*lit`) or prefix
# (`lit*`) rule in the bucket of its literal's last or first four bytes (two when it has two or
# three); every other rule (`*lit*`, general globs, one-byte literals) in the bucket a key always
# looks in. The first rule in the plan's order that matches wins, as in scan_rules: a bucket's
# rules are in that order, and the least match over the key's buckets is the first.
cdef enum:
    AFFIX_BUCKETS = 64
    SUFFIX2 = 0
    SUFFIX4 = AFFIX_BUCKETS
    PREFIX2 = 2 * AFFIX_BUCKETS
    PREFIX4 = 3 * AFFIX_BUCKETS
    ALWAYS = 4 * AFFIX_BUCKETS


cdef inline uint32_t lower_hash(const unsigned char* s, Py_ssize_t n) noexcept:
    """FNV-1a of ``s`` lowercased (ASCII, as the rules' patterns are compiled)."""
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t k
    for k in range(n):
        h = (h ^ lower(s[k])) * 16777619u
    return h


cdef inline int affix(const unsigned char* s, Py_ssize_t n) noexcept:
    """The bucket (within its table) of the ``n`` bytes at ``s``, lowercased."""
    cdef uint32_t h = lower_hash(s, n)
    return <int>((h ^ (h >> 16)) & (AFFIX_BUCKETS - 1))


cdef int rule_bucket(CPlan* plan, Rule* r) noexcept:
    """The bucket of one rule (the exact keys' table comes after the affix tables)."""
    cdef Py_ssize_t w
    if r.is_glob == G_EXACT:
        return ALWAYS + 1 + <int>(lower_hash(r.pat, r.plen) & plan.exact_mask)
    if (r.is_glob == G_SUFFIX or r.is_glob == G_PREFIX) and r.llen >= 2:
        w = 4 if r.llen >= 4 else 2
        if r.is_glob == G_SUFFIX:
            return (SUFFIX4 if w == 4 else SUFFIX2) + affix(r.lit + r.llen - w, w)
        return (PREFIX4 if w == 4 else PREFIX2) + affix(r.lit, w)
    return ALWAYS


cdef void index_rules(CPlan* plan) except *:
    """Fill the plan's rule index (its rules are compiled)."""
    cdef int i, b, nexact = 0, nbuckets
    cdef uint32_t size = 16
    plan.exact_max = -1
    for i in range(plan.nrules):
        if plan.rules[i].is_glob == G_EXACT:
            nexact += 1
            plan.exact_max = max(plan.exact_max, plan.rules[i].plen)
    while size < 2 * <uint32_t>nexact:
        size <<= 1
    plan.exact_mask = size - 1
    plan.match = index_match
    nbuckets = ALWAYS + 1 + <int>size
    plan.bucket_start = <int*>PyMem_Malloc(sizeof(int) * (nbuckets + 1))
    plan.rule_index = <int*>PyMem_Malloc(sizeof(int) * (plan.nrules + 1))
    if plan.bucket_start == NULL or plan.rule_index == NULL:
        raise MemoryError()
    for b in range(nbuckets + 1):
        plan.bucket_start[b] = 0
    for i in range(plan.nrules):  # counts, then each bucket's start, then the rules in order
        plan.bucket_start[rule_bucket(plan, &plan.rules[i]) + 1] += 1
    for b in range(nbuckets):
        plan.bucket_start[b + 1] += plan.bucket_start[b]
    for i in range(plan.nrules):
        b = rule_bucket(plan, &plan.rules[i])
        plan.rule_index[plan.bucket_start[b]] = i
        plan.bucket_start[b] += 1
    for b in range(nbuckets, 0, -1):  # each bucket's fill moved its start to the next one's
        plan.bucket_start[b] = plan.bucket_start[b - 1]
    plan.bucket_start[0] = 0


cdef inline int first_in(CPlan* plan, int b, const unsigned char* key, Py_ssize_t kn,
                         int best) noexcept:
    """The first rule of bucket ``b`` before rule ``best`` that matches the key, else ``best``."""
    cdef int j, i
    for j in range(plan.bucket_start[b], plan.bucket_start[b + 1]):
        i = plan.rule_index[j]
        if i >= best:
            break
        if rule_matches(&plan.rules[i], key, kn):
            return i
    return best


cdef Rule* index_match(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    """scan_rules's answer, from the buckets the key's bytes name."""
    cdef int best = plan.nrules
    if kn <= plan.exact_max:  # a longer key is no exact rule's (and is not hashed: it may be long)
        best = first_in(plan, ALWAYS + 1 + <int>(lower_hash(key, kn) & plan.exact_mask), key, kn, best)
    if kn >= 2:
        best = first_in(plan, SUFFIX2 + affix(key + kn - 2, 2), key, kn, best)
        best = first_in(plan, PREFIX2 + affix(key, 2), key, kn, best)
        if kn >= 4:
            best = first_in(plan, SUFFIX4 + affix(key + kn - 4, 4), key, kn, best)
            best = first_in(plan, PREFIX4 + affix(key, 4), key, kn, best)
    best = first_in(plan, ALWAYS, key, kn, best)
    return NULL if best == plan.nrules else &plan.rules[best]


cdef Rule* match_rule(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept:
    cdef uint32_t h
    cdef KeySlot* slot
    cdef Rule* rule
    if plan.nrules < 4:
        return scan_rules(plan, key, kn)
    if kn > KEY_MAX:
        return plan.match(plan, key, kn)
    h = key_hash(key, kn) ^ <uint32_t>(plan.id * 2654435761u)
    slot = &_KEY_CACHE[h >> (32 - KEY_BITS)]
    if slot.plan_id == plan.id and slot.hash == h and slot.klen == kn and same_key(slot.key, key, kn):
        return NULL if slot.rule < 0 else &plan.rules[slot.rule]
    rule = plan.match(plan, key, kn)  # through the plan: kept out of this function's hit path
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
            note_field(st, KV, &f)
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
            else:
                note_field(st, ANY, &g)
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


cdef inline bint kv_simple(const unsigned char* d, Py_ssize_t vs, Py_ssize_t ve,
                          Py_ssize_t* ke, Py_ssize_t* ss) noexcept:
    """Whether the KeyValue in d[vs:ve] is the common one, well formed: a key shorter than 128
    bytes, then one value of one string shorter than 128 bytes, an int, a double or a bool (or
    empty). Then the key ends at ke[0] and the string starts at ss[0] (-1: not a string, or
    it is empty) and ends at ve. Anything else is left to the full walk."""
    cdef Py_ssize_t p
    if ve - vs < 4 or d[vs] != 0x0A or d[vs + 1] >= 0x80:
        return False
    p = vs + 2 + d[vs + 1]
    if p + 2 > ve or d[p] != 0x12 or d[p + 1] >= 0x80 or p + 2 + d[p + 1] != ve \
            or not scalar_value(d, p + 2, ve):
        return False
    ke[0] = p
    ss[0] = p + 4 if p + 2 < ve and d[p + 2] == 0x0A and p + 4 < ve else -1
    return True


cdef inline int scan_masked(St* st, Py_ssize_t ss, Py_ssize_t se) noexcept:
    """Mask the card numbers in the string data[ss:se] (the detector's action is mask_pan)."""
    cdef int n = find_pans_c(st, st.data + ss, se - ss)
    if n <= 0:
        return n
    st.counts[st.plan.det_slot] += n
    return mask_edit(st, ss, se, n)


cdef int mask_keys(St* st, Py_ssize_t vs, Py_ssize_t ve, Py_ssize_t since,
                   Py_ssize_t spare=-1) noexcept:
    """Mask the card numbers in the key of the KeyValue data[vs:ve] (every `key` field but the
    one whose bytes start at ``spare``: the digits but the last four, whatever the detector's
    action, so the length stays), each edit put among those made since edit ``since`` in the
    order of the bytes. -1 on error."""
    cdef Py_ssize_t pos = vs, mark, k
    cdef Field f
    cdef int n, j
    while pos < ve:
        if next_field(st, pos, ve, KV, &f) < 0:
            return -1
        pos = f.ve
        if f.fn != 1 or f.wt != 2 or f.vs == spare or not may_hold_pan(st.data + f.vs, f.ve - f.vs):
            continue
        n = find_pans_c(st, st.data + f.vs, f.ve - f.vs)
        if n < 0:
            return -1
        if n == 0:
            continue
        st.counts[st.plan.det_slot] += n
        if st.dry:
            continue
        mark = st.arena.n
        if buf_put(st, &st.arena, st.data + f.vs, f.ve - f.vs) < 0:
            return -1
        for j in range(n):
            mask_digits(st.arena.p + mark, st.pans[j].i, st.pans[j].j)
        k = since
        while k < st.nedits and st.edits[k].start < f.vs:
            k += 1
        if add_edit(st, f.vs, f.ve, mark, k) < 0:
            return -1
    return 0


cdef Py_ssize_t kv(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve,
                   int active) noexcept:
    """An attribute (KeyValue field): apply the first matching rule, else the detectors; a card
    number in its key is masked unless a rule drops or keeps (exempts) the attribute."""
    cdef CPlan* plan = st.plan
    cdef Py_ssize_t ks, ke, at, d
    cdef Rule* rule
    cdef int r
    cdef Py_ssize_t ss, se
    if active and (plan.det_action == ACT_MASK or plan.det_action == 0) and \
            kv_simple(st.data, vs, ve, &ke, &ss):
        # the common attribute, read in one pass: a short key and one scalar value
        ks = vs + 2
        rule = match_rule(plan, st.data + ks, ke - ks) if plan.nrules else NULL
        if rule == NULL:
            if plan.det_action:
                if may_hold_pan(st.data + ks, ke - ks) and scan_masked(st, ks, ke) < 0:
                    return 0
                if ss >= 0 and scan_masked(st, ss, ve) < 0:
                    return 0
            return 0
    elif not active or not plan.nrules:
        at = st.nedits
        if active and plan.det_action == ACT_MASK:
            r = kv_scalar(st, vs, ve, 1)
            if r != 0:
                if r > 0:
                    mask_keys(st, vs, ve, at)
                return 0
        d = submsg(st, KV, tag_pos, vs, ve, active and plan.det_action != 0)
        if active and plan.det_action and not st.err:
            mask_keys(st, vs, ve, at)
        return d
    else:
        if kv_key(st, vs, ve, &ks, &ke) < 0:
            return 0
        rule = match_rule(plan, st.data + ks, ke - ks)
    if rule == NULL:
        at = st.nedits
        if plan.det_action == ACT_MASK or plan.det_action == 0:
            r = kv_scalar(st, vs, ve, plan.det_action != 0)
            if r != 0:
                if r > 0 and plan.det_action:
                    mask_keys(st, vs, ve, at)
                return 0
        d = submsg(st, KV, tag_pos, vs, ve, 1)
        if plan.det_action and not st.err:
            mask_keys(st, vs, ve, at)
        return d
    walk(st, KV, vs, ve, 0)
    if st.err:
        return 0
    st.counts[rule.slot] += 1  # a `keep` (an exemption) is counted too: each use is audited
    if rule.action == ACT_KEEP:
        if plan.det_action:  # the exemption names the last key (at ks); an earlier `key` field is not it
            mask_keys(st, vs, ve, st.nedits, ks)
        return 0
    if rule.action == ACT_DROP:
        add_edit(st, tag_pos, ve, st.arena.n, -1)
        return -(ve - tag_pos)
    at = st.nedits
    d = replace_value(st, vs, ve, rule.action)
    if st.err:
        return 0
    if plan.det_action and mask_keys(st, vs, ve, at) < 0:
        return 0
    if d == 0:
        return 0
    return prefix_edit(st, tag_pos, vs, ve, d, at)


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
    cdef int kind = 0, others
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
        others = other_members(st, s, e, kind)
        if others < 0:
            return 0
        if kind == 1 and not others:
            pos = s
            while pos < e:
                if next_field(st, pos, e, ANY, &f) < 0:
                    return 0
                if f.fn == 1 and f.wt == 2 and mask_edit(st, f.vs, f.ve, -1) < 0:
                    return 0
                pos = f.ve
            return delta
        if kind == 0 or (kind == 2 and not others):
            return delta
        if kind == 1 or kind == 2:
            # earlier members of the value (a string, an array of strings beside the string or
            # boolean a parser keeps) leave unscanned otherwise: the value becomes its last alone
            mark = st.arena.n
            if kind == 1:
                if buf_put(st, &st.scratch, st.data + ks, ke - ks) < 0:
                    return 0
                mask_digits(st.scratch.p, 0, st.scratch.n)
                if buf_varint(st, &st.arena, 0x12) < 0 or \
                        buf_varint(st, &st.arena, len_field_size(1, st.scratch.n)) < 0 or \
                        buf_len_field(st, &st.arena, 1, st.scratch.p, st.scratch.n) < 0:
                    return 0
            elif buf_varint(st, &st.arena, 0x12) < 0 or \
                    buf_varint(st, &st.arena, 1 + varint_size(kvv)) < 0 or \
                    buf_varint(st, &st.arena, 0x10) < 0 or buf_varint(st, &st.arena, kvv) < 0:
                return 0
            if add_edit(st, tag_pos, e, mark, -1) < 0:
                return 0
            return delta + (st.arena.n - mark) - (e - tag_pos)
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


cdef int other_members(St* st, Py_ssize_t s, Py_ssize_t e, int kind) noexcept:
    """1 if the AnyValue in data[s:e] holds a field other than its last member's (kind), 0 if not,
    -1 on error."""
    cdef Py_ssize_t pos = s
    cdef Field f
    while pos < e:
        if next_field(st, pos, e, ANY, &f) < 0:
            return -1
        if <int>f.fn != kind:
            return 1
        pos = f.ve
    return 0


cdef Py_ssize_t stamp_kv(St* st, Py_ssize_t tag_pos, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    cdef Py_ssize_t ks, ke
    cdef Stamp* stamp
    if kv_key(st, vs, ve, &ks, &ke) < 0:
        return 0
    stamp = find_stamp(st.plan, st.data + ks, ke - ks)
    if stamp == NULL:
        return kv(st, tag_pos, vs, ve, 1)
    walk(st, KV, vs, ve, 0)
    if st.err:
        return 0
    return apply_stamp(st, stamp, tag_pos, vs, ve)


# ---- sampling ----

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
    # nor does it note fields OTLP does not define (note_field returns at once): a span sampling
    # drops leaves nothing, one it keeps is walked below (in a dry run the pass notes them)
    cdef int unknown = st.unknown
    if not st.dry:
        st.unknown = 1
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
    if not st.dry:
        st.unknown = unknown
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
                if not st.dry:
                    st.unknown = unknown  # nothing of it leaves (the twin's _span: the same)
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
    if new_ts and plan.det_action and (find_pans_c(st, buf + ts_s, ts_e - ts_s) > 0 or
                                       find_pans_c(st, st.scratch.p, st.scratch.n) > 0):
        # a card number in the tracestate: it is masked where it is, and its threshold is not
        # written (the new value would copy the number from its other members). One in the new
        # value only: its members moved (the `ot` entry first) or its threshold's trailing zeros
        # cut make digits a card number: the tracestate leaves as it came, scanned
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
    st.unknown = 0
    st.grown = 0
    st.max_growth = PY_SSIZE_T_MAX
    st.err = E_NONE


cdef void st_free(St* st) noexcept:
    PyMem_Free(st.edits)
    PyMem_Free(st.arena.p)
    PyMem_Free(st.scratch.p)
    PyMem_Free(st.pans)
    PyMem_Free(st.attrs)
    PyMem_Free(st.counts)


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
    """(tag position, start, end) of each top-level Resource* field, validating the framing; the
    request's other fields (none is OTLP's) noted in the walk."""
    cdef Py_ssize_t pos = 0, tag_pos
    cdef Field f
    out = []
    while pos < st.size:
        tag_pos = pos
        if next_field(st, pos, st.size, t, &f) < 0:
            raise error_of(st)
        pos = f.ve
        if f.fn == 1:
            if f.wt != 2:
                fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
                raise error_of(st)
            out.append((tag_pos, f.vs, f.ve))
        else:
            note_field(st, t, &f)
    return out


def count_resources(signal, data, Py_ssize_t stop_at=0):
    """The top-level resources of a request, its framing checked at that level only, counted up
    to ``stop_at`` (0: all of them). Nothing is made per resource: a request's cap is checked
    with it before split_resources() makes an object for each (two bytes of an empty resource
    would otherwise cost hundreds of bytes each)."""
    cdef Py_buffer view
    cdef St st_
    cdef St* st = &st_
    cdef int t = REQUEST_TYPE[signal]
    cdef Py_ssize_t pos = 0, tag_pos, n = 0
    cdef Field f
    st_open(st, data, &view)
    try:
        while pos < st.size and (stop_at <= 0 or n < stop_at):
            tag_pos = pos
            if next_field(st, pos, st.size, t, &f) < 0:
                raise error_of(st)
            pos = f.ve
            if f.fn == 1:
                if f.wt != 2:
                    fail(st, E_WRONG_WT, t, f.fn, f.wt, tag_pos)
                    raise error_of(st)
                n += 1
        return n
    finally:
        st_free(st)
        PyBuffer_Release(&view)


def count_items(signal, data):
    """Validate the request and count its spans / data points / log records."""
    cdef Py_buffer view
    cdef St st_
    cdef St* st = &st_
    st_open(st, data, &view)
    try:
        walk(st, REQUEST_TYPE[signal], 0, st.size, 0)
        if st.err:
            raise error_of(st)
        return st.items_in
    finally:
        st_free(st)
        PyBuffer_Release(&view)


cdef bytes _resource_bytes(St* st, int t, Py_ssize_t s, Py_ssize_t e):
    cdef Py_ssize_t pos = s
    cdef Field f
    parts = []
    while pos < e:
        if next_field(st, pos, e, t, &f) < 0:
            raise error_of(st)
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
    cdef St st_
    cdef St* st = &st_
    cdef int t = RS_TYPE[signal]
    cdef Py_ssize_t before
    st_open(st, data, &view)
    try:
        out = []
        for index, (_tag, s, e) in enumerate(_resource_ranges(st, REQUEST_TYPE[signal])):
            before = st.items_in
            if validate:
                walk(st, t, s, e, 0)
            else:
                count_quickly(st, t, s, e, count)
            if st.err:
                raise error_of(st)
            key = _resource_bytes(st, t, s, e)
            out.append(ResourceInfo(index, key, st.items_in - before))
        return out
    finally:
        st_free(st)
        PyBuffer_Release(&view)


def rewrite(signal, data, plans, Py_ssize_t max_growth=MAX_GROWTH):
    """Apply plans (aligned with split_resources) to the request data (bytes-like, read in
    place); the result's data is bytes. RewriteTooLarge as soon as the edits would add more than
    max_growth bytes (0: no cap): their replacement bytes plus EDIT_BYTES per edit record.

    The walk meets every field of the request; those it copies without walking them are checked
    against the egress allowlist as it goes (note_field; the result's ``maybe_unknown``: only a
    result that says so needs unknown_field)."""
    cdef Py_buffer view
    cdef St st_
    cdef St* st = &st_
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
    st_open(st, data, &view)
    if max_growth > 0:
        st.max_growth = max_growth
    try:
        ranges = _resource_ranges(st, REQUEST_TYPE[signal])
        if len(ranges) != len(boxes):
            raise ValueError(f"{len(boxes)} plans for {len(ranges)} resources")
        if all_noop:
            walk(st, REQUEST_TYPE[signal], 0, st.size, 0)
            if st.err:
                raise error_of(st)
            return RewriteResult(_unchanged(st, data), st.items_in, st.items_in, 0, 0, (), {},
                                 st.unknown != 0)
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
            r = -1 if box.p.noop else refusal(st, t, s, e)
            if r == -2 or st.err:
                raise error_of(st)
            if r != -1:
                walk(st, t, s, e, 0)
                if st.err:
                    raise error_of(st)
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
                    add_edit(st, tag_pos, e, st.arena.n, -1)
                    delta -= e - tag_pos
            else:
                delta += submsg(st, t, tag_pos, s, e, not box.p.noop)
            if st.err:
                if st.err == E_PYTHON:
                    raise RuntimeError("hashing a value failed")
                raise error_of(st)
            if box.p.dry_run:
                st.sampled_out = before_sampled
            for k in range(box.p.nslots):
                if st.counts[k]:
                    key = box.compiled.slots[k]
                    counts[key] = counts.get(key, 0) + st.counts[k]
        out = _splice(st, data)
        sampled = st.sampled_out
        return RewriteResult(out, st.items_in, st.items_in - rejected - sampled, rejected,
                             sampled, tuple(refusals), counts, st.unknown != 0)
    finally:
        st_free(st)
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



