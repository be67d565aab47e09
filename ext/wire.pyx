# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The cold half of the wire primitives (the hot half is inline in ``sidecar/_ext/wire.pxd``):
growing an output buffer, and the error a walk recorded as the exception to raise. The twin:
``sidecar/rewrite/_wire.py``."""

from cpython.mem cimport PyMem_Realloc

from sidecar._ext.state cimport (
    E_DEPTH,
    E_FIELD0,
    E_FIXED_TRUNC,
    E_GROWTH,
    E_LEN_TRUNC,
    E_MEMORY,
    E_TAG,
    E_VARINT_LONG,
    E_VARINT_TRUNC,
    E_WIRETYPE,
    E_WRONG_WT,
    NTYPES,
    Buf,
    St,
)

from sidecar.rewrite._common import MalformedRequest, RewriteTooLarge
from sidecar.rewrite._schema import MAX_NESTING, NAMES

IMPLEMENTATION = "cython"


cdef int buf_grow(St* st, Buf* b, Py_ssize_t need) noexcept:
    """Make room for b.n + extra bytes (need): double the capacity until it fits. The arena
    holds every replacement charged so far (add_edit): past st.max_growth it would be refused
    at its edit, so it is here, before one large replacement is built (not in a dry run: none
    is charged)."""
    cdef Py_ssize_t cap
    cdef unsigned char* p
    if b == &st.arena and need > st.max_growth and not st.dry:
        return fail(st, E_GROWTH, 0, 0, 0, 0)
    cap = b.cap * 2 if b.cap else 256
    while cap < need:
        cap *= 2
    p = <unsigned char*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        return fail(st, E_MEMORY, 0, 0, 0, 0)
    b.p = p
    b.cap = cap
    return 0


cdef object error_of(St* st):
    """The error recorded in st as the exception to raise (MalformedRequest for bad input)."""
    name = NAMES[st.e_t] if 0 <= st.e_t < NTYPES else "?"
    c = st.err
    if c == E_MEMORY:
        return MemoryError()
    if c == E_GROWTH:
        return RewriteTooLarge(st.max_growth)
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
