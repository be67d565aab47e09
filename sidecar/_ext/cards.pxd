# The card-number detector (the rule in docs/rewriter.md). The twin: sidecar/rewrite/_cards.py.

from sidecar._ext.state cimport St


cdef int find_pans_c(St* st, const unsigned char* s, Py_ssize_t n) noexcept


cdef inline bint is_digit(unsigned char c) noexcept:
    return <unsigned char>(c - 48) <= 9


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
