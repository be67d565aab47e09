# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The card-number detector: candidates, brands, Luhn, the exclusions (docs/rewriter.md).
The twin: ``sidecar/rewrite/_cards.py``; the tests cross the two."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memcpy

from sidecar._ext.state cimport E_MEMORY, E_NONE, Pan, St
from sidecar._ext.wire cimport fail

__all__ = ["IMPLEMENTATION", "find_pans"]

IMPLEMENTATION = "cython"


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
        if nd >= 12:
            prev = s[i - 1] if i > 0 else 0
            if i > 0 and (prev == 43 or ((prev == 44 or prev == 46) and i > 1
                                         and is_digit(s[i - 2]))):
                pass
            elif nd <= 19 and brand_ok(digits, nd) and luhn_ok(digits, nd) and not in_uuid(s, n, i, j):
                if add_pan(st, &count, i, j, digits, nd) < 0:
                    return -1
            elif nd < j - i:  # separators in it: search its groups
                if groups_holding_pans(st, s, n, i, j, &count) < 0:
                    return -1
        q = j + 11
    return count


cdef int add_pan(St* st, int* count, Py_ssize_t i, Py_ssize_t j, const unsigned char* digits,
                 int nd) noexcept:
    cdef Pan* p
    if count[0] == st.cappans:
        p = <Pan*>PyMem_Realloc(st.pans, sizeof(Pan) * (st.cappans * 2 + 8))
        if p == NULL:
            fail(st, E_MEMORY, 0, 0, 0, 0)
            return -1
        st.pans = p
        st.cappans = st.cappans * 2 + 8
    p = &st.pans[count[0]]
    p.i = i
    p.j = j
    p.nd = nd
    memcpy(p.digits, digits, nd)
    count[0] += 1
    return 0


cdef int groups_holding_pans(St* st, const unsigned char* s, Py_ssize_t n, Py_ssize_t i,
                             Py_ssize_t j, int* count) noexcept:
    """Card numbers made of whole groups of the run s[i:j] (digits between its separators), for a
    run that is not one as a whole: from each group on, the longest card number of 12-19 digits
    is taken, and the search goes on after it (the twin's _groups_holding_pans)."""
    cdef Py_ssize_t g = i
    cdef Py_ssize_t k, best_j = 0
    cdef int nd, best_nd
    cdef unsigned char digits[20]
    cdef unsigned char best[20]
    while g < j:
        k = g
        nd = 0
        best_nd = 0
        while k < j:
            while k < j and is_digit(s[k]):
                if nd < 20:
                    digits[nd] = s[k]
                nd += 1
                k += 1
            if nd > 19:
                break
            if nd >= 12 and brand_ok(digits, nd) and luhn_ok(digits, nd) and not in_uuid(s, n, g, k):
                best_nd = nd
                best_j = k
                memcpy(best, digits, nd)
            k += 1  # the separator
        if best_nd:
            if add_pan(st, count, g, best_j, best, best_nd) < 0:
                return -1
            g = best_j + 1
        else:
            k = g
            while k < j and is_digit(s[k]):
                k += 1
            g = k + 1
    return 0


def find_pans(s):
    """Card numbers in s: (start, end, digits), by the rule in docs/rewriter.md."""
    cdef bytes b = s if type(s) is bytes else bytes(s)
    cdef St st
    cdef int n, k
    st.pans = NULL
    st.cappans = 0
    st.err = E_NONE
    try:
        n = find_pans_c(&st, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        if n < 0:
            raise MemoryError()
        return [(st.pans[k].i, st.pans[k].j,
                 PyBytes_FromStringAndSize(<const char*>st.pans[k].digits, st.pans[k].nd))
                for k in range(n)]
    finally:
        PyMem_Free(st.pans)
