# The declarations the rewriter's modules share: the schema's codes, a plan compiled into C
# structs, and the state of one walk over a request. Declarations only (no module of its own).
# The pure-Python twin's counterparts: sidecar/rewrite/_schema.py, _common.py and _state.py.

from libc.stdint cimport int64_t, uint32_t, uint64_t

# ---- codes (sidecar/rewrite/_schema.py and _common.py; checked at import by rewrite.pyx) ----
cdef enum:
    NTYPES = 31
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
    E_GROWTH = 12
cdef enum:
    EDIT_BYTES = 32  # what an edit record is charged (sizeof(Edit) on 64-bit; _common.EDIT_BYTES)


# ---- a compiled plan (filled by rewrite.pyx's _PlanBox) ----

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
    # the rules indexed by what a key must hold to match (rewrite.pyx's index_match): bucket b's
    # rule numbers, ascending, are rule_index[bucket_start[b] : bucket_start[b + 1]]
    int* rule_index
    int* bucket_start
    uint32_t exact_mask
    Py_ssize_t exact_max
    Rule* (*match)(CPlan*, const unsigned char*, Py_ssize_t) noexcept


# ---- the state of one walk ----

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
    # a field OTLP does not define was met in what the walk copies (RewriteResult.maybe_unknown;
    # the twin: _state.State.unknown)
    int unknown
    int depth
    int max_depth
    Py_ssize_t items_in
    Py_ssize_t sampled_out
    const unsigned char* ts_new
    Py_ssize_t ts_new_len
    int has_ts_new
    Py_ssize_t ts_last
    # what the edits added (replacement bytes + EDIT_BYTES a record) and the most they may
    Py_ssize_t grown
    Py_ssize_t max_growth
    # error
    int err
    int e_t
    uint32_t e_fn
    int e_wt
    Py_ssize_t e_off

