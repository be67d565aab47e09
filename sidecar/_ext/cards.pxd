# The card-number detector (the rule in docs/rewriter.md). The twin: sidecar/rewrite/_cards.py.

from sidecar._ext.state cimport St


cdef int find_pans_c(St* st, const unsigned char* s, Py_ssize_t n) noexcept


cdef inline bint is_digit(unsigned char c) noexcept:
    return <unsigned char>(c - 48) <= 9


cdef inline void mask_digits(unsigned char* b, Py_ssize_t i, Py_ssize_t j) noexcept:
    """Every digit of b[i:j] but the last four becomes '*'; a full-width digit (EF BC 90-99)
    becomes a full-width asterisk (EF BC 8A): the length stays."""
    cdef int keep = 4
    cdef Py_ssize_t k = j - 1
    cdef unsigned char c
    while k >= i:
        c = b[k]
        if <unsigned char>(c - 48) <= 9:
            if keep:
                keep -= 1
            else:
                b[k] = 42
        elif 0x90 <= c <= 0x99 and k - 2 >= i and b[k - 1] == 0xBC and b[k - 2] == 0xEF:
            if keep:
                keep -= 1
            else:
                b[k] = 0x8A
            k -= 2
        k -= 1


cdef inline bint may_hold_pan(const unsigned char* s, Py_ssize_t n) noexcept:
    """False when find_pans_c(s, n) finds nothing at its first probes: no digit (nor a space or
    dash between two digits) at bytes 11, 23, 35, ... (every run of a card number's 12 or more
    bytes covers one of them), and no probe met a byte of a non-ASCII character in a string of
    36 bytes or more (a full-width run). Inline and without a call, so a short name costs little
    (attribute keys)."""
    cdef Py_ssize_t q = 11
    cdef unsigned char c, seen = 0
    while q < n:
        c = s[q]
        if <unsigned char>(c - 48) <= 9:
            return True
        if (c == 32 or c == 45) and q + 1 < n and <unsigned char>(s[q - 1] - 48) <= 9 \
                and <unsigned char>(s[q + 1] - 48) <= 9:
            return True
        seen |= c | s[q - 1]
        q += 12
    return seen >= 0x80 and n >= 36
