# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The card-number detector: candidates, brands, Luhn, the exclusions (docs/rewriter.md).
The twin: ``sidecar/rewrite/_cards.py``; the tests cross the two."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memchr, memcpy

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
    """Does an 8-4-4-4-12 hex group hold all of s[i:j]? (one that only overlaps it does not: the
    digits beyond it may be a card number)"""
    cdef Py_ssize_t st0 = j - 36 if j > 36 else 0
    cdef Py_ssize_t last = i
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
    """Fill st.pans with the card numbers in s, in order; return how many (or -1 on memory error).

    ASCII runs first; when s holds a full-width digit, the full-width runs too (wide_runs)."""
    cdef int count = find_runs(st, s, n, 0)
    if count >= WIDE_SEEN:
        count -= WIDE_SEEN
        if n >= 36:  # a card number: 12 full-width digits or more
            return wide_runs(st, s, n, count)
    return count


cdef int wide_runs(St* st, const unsigned char* s, Py_ssize_t n, int count) noexcept:
    """find_pans_c for the full-width runs of s, after the ``count`` card numbers of its ASCII
    runs: they are read from a copy of s in which full-width digits and their separators are
    folded to ASCII and ASCII digits hidden (the twin's _find_wide), so the two kinds never join
    in one run; then the list is put in order of position."""
    cdef int total, k, m
    cdef Py_ssize_t folded_n
    cdef unsigned char* folded
    cdef Pan moved
    if not has_wide_digit(s, n):
        return count
    folded = <unsigned char*>PyMem_Malloc(n)
    if folded == NULL:
        fail(st, E_MEMORY, 0, 0, 0, 0)
        return -1
    folded_n = fold_wide(s, n, folded)
    total = find_runs(st, folded, folded_n, count)
    PyMem_Free(folded)
    if total < 0:
        return -1
    total &= WIDE_SEEN - 1
    unfold_offsets(s, n, st.pans + count, total - count)
    for k in range(count, total):  # runs of the two kinds never overlap
        moved = st.pans[k]
        m = k
        while m > 0 and st.pans[m - 1].i > moved.i:
            st.pans[m] = st.pans[m - 1]
            m -= 1
        st.pans[m] = moved
    return total


cdef bint has_wide_digit(const unsigned char* s, Py_ssize_t n) noexcept:
    """Does s hold a full-width digit (U+FF10-U+FF19: EF BC 90-99)? memchr for its first byte:
    ASCII text is passed over many bytes a step."""
    cdef const unsigned char* p = s
    cdef const unsigned char* end = s + n
    while p < end:
        p = <const unsigned char*>memchr(p, 0xEF, end - p)
        if p == NULL:
            return False
        if end - p >= 3 and p[1] == 0xBC and 0x90 <= p[2] <= 0x99:
            return True
        p += 1
    return False


cdef inline unsigned char wide_char(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept:
    """The ASCII character the three bytes at s[k] fold to (0: none): a full-width digit, + , - .
    (EF BC 8B-8E, 90-99) or U+3000 (a space)."""
    cdef unsigned char t
    if k + 2 >= n:
        return 0
    if s[k] == 0xEF and s[k + 1] == 0xBC:
        t = s[k + 2]
        if 0x90 <= t <= 0x99:
            return t - 0x90 + 48
        if t == 0x8B:
            return 43
        if t == 0x8C:
            return 44
        if t == 0x8D:
            return 45
        if t == 0x8E:
            return 46
    elif s[k] == 0xE3 and s[k + 1] == 0x80 and s[k + 2] == 0x80:
        return 32
    return 0


cdef Py_ssize_t fold_wide(const unsigned char* s, Py_ssize_t n, unsigned char* out) noexcept:
    """Write s to out with full-width characters folded to ASCII (wide_char) and ASCII digits
    hidden (as 'x'); return out's length."""
    cdef Py_ssize_t k = 0, m = 0
    cdef unsigned char c, w
    while k < n:
        c = s[k]
        if c >= 0xE3:
            w = wide_char(s, n, k)
            if w:
                out[m] = w
                m += 1
                k += 3
                continue
        out[m] = 120 if is_digit(c) else c
        m += 1
        k += 1
    return m


cdef void unfold_offsets(const unsigned char* s, Py_ssize_t n, Pan* pans, int count) noexcept:
    """Turn the offsets of pans (found in fold_wide's output of s, in order) into offsets in s."""
    cdef Py_ssize_t k = 0, m = 0
    cdef int p = 0, end = 0
    while p < count:
        # pans[p].i, then pans[p].j: each is met in order as the folded offset m grows
        if end == 0 and m == pans[p].i:
            pans[p].i = k
            end = 1
            continue
        if end == 1 and m == pans[p].j:
            pans[p].j = k
            end = 0
            p += 1
            continue
        k += 3 if s[k] >= 0xE3 and wide_char(s, n, k) else 1
        m += 1


#: added to find_runs' count when a probe met a byte of a non-ASCII character (every full-width
#: run of a card number's 36 bytes or more holds a probe's byte; see find_pans_c)
cdef enum:
    WIDE_SEEN = 1 << 30


cdef inline int find_runs(St* st, const unsigned char* s, Py_ssize_t n, int count) noexcept:
    """Add the card numbers of s's ASCII runs to st.pans after its first ``count``; return the new
    count, plus WIDE_SEEN when a probe met a byte of a non-ASCII character (or -1 on memory
    error).

    A card number's run spans at least 12 bytes, so only every 12th byte is probed; a
    probe that lands on a digit (or a separator between two digits) backs up to the start
    of its run, and runs are then read exactly as in the twin's left-to-right scan.
    """
    cdef Py_ssize_t q = 11
    cdef Py_ssize_t i, j
    cdef int nd
    cdef unsigned char c, prev, seen = 0
    cdef bint exempt
    cdef unsigned char digits[20]
    while q < n:
        c = s[q]
        if is_digit(c):
            i = q
        elif is_sep(c) and q + 1 < n and is_digit(s[q - 1]) and is_digit(s[q + 1]):
            i = q - 1
        else:
            # a probe in a full-width run sees a byte of one of its characters, or an ASCII
            # separator right after one: either way a byte >= 0x80 here (no branch)
            seen |= c | s[q - 1]
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
            # '+': a phone number (E.164: at most 15 digits); a digit and '.' or ',': the fraction
            # of a number. Then the run's first group is that, and only groups after it may start
            # a card number; 16 digits or more after '+' are no phone number as a whole
            prev = s[i - 1] if i > 0 else 0
            exempt = i > 0 and (prev == 43 or ((prev == 44 or prev == 46) and i > 1 and is_digit(s[i - 2])))
            if (not exempt or (prev == 43 and nd > 15)) and nd <= 19 and brand_ok(digits, nd) \
                    and luhn_ok(digits, nd) and not in_uuid(s, n, i, j):
                if add_pan(st, &count, i, j, digits, nd) < 0:
                    return -1
            elif nd < j - i:  # separators in it: search its groups
                if groups_holding_pans(st, s, n, i, j, exempt, &count) < 0:
                    return -1
        q = j + 11
    return count + WIDE_SEEN if seen >= 0x80 else count


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


#: the fewest digits of a group the group search takes (the twin's _MIN_GROUP)
cdef int MIN_GROUP = 3


cdef inline bint brand_first(unsigned char c) noexcept:
    """Can a brand's prefix start with the digit c? (2, 3, 4, 5, 6, 8: the table in brand_ok)"""
    return c == 50 or c == 51 or c == 52 or c == 53 or c == 54 or c == 56


cdef struct Group:
    Py_ssize_t s  # its first digit
    Py_ssize_t e  # after its last digit
    int cnt  # its digits
    int a  # Luhn sum of its digits alone, the last at an even place from the right
    int b  # the same, the last at an odd place


cdef inline void read_group(const unsigned char* s, Py_ssize_t j, Py_ssize_t* k, Group* g) noexcept:
    """The group of the run at k (a digit); k moves past it and its separator."""
    cdef Py_ssize_t p = k[0]
    cdef int a = 0, b = 0, t, d, cnt = 0
    g.s = p
    while p < j and is_digit(s[p]):
        d = s[p] - 48
        t = b + d
        b = a + (2 * d - 9 if d > 4 else 2 * d)
        a = t
        cnt += 1
        p += 1
    g.e = p
    g.cnt = cnt
    g.a = a
    g.b = b
    k[0] = p + 1


cdef int groups_holding_pans(St* st, const unsigned char* s, Py_ssize_t n, Py_ssize_t i,
                             Py_ssize_t j, bint skip_first, int* count) noexcept:
    """Card numbers made of whole groups of the run s[i:j] (digits between its separators), for a
    run that is not one as a whole (the twin's _groups_holding_pans): every group of 3 or more
    digits on a brand's first digit starts a search for the longest card number of whole groups of
    3 or more digits from it, and overlapping finds are merged into one span carrying its first
    find's digits. skip_first: the first group is a phone number's or a fraction's, and starts no
    search. Each group is read once: a window's Luhn sum is composed from its groups' sums, so a
    run of many short groups costs a few steps a group, not one a digit of every window."""
    cdef Group gq[8]  # a ring: gq[r0] is the group a search starts from, then those after it
    cdef int ng = 0, r0 = 0, h, best_h, nd, maxg, A, B, tA, m
    cdef bint spaced
    cdef Py_ssize_t k = i, p, span_i = -1, span_j = -1
    cdef int span_nd = 0
    cdef unsigned char first4[4]
    cdef unsigned char best[20]
    cdef Group* g
    cdef Group* q
    while True:
        if ng == 0:
            if k >= j:
                break
            # nothing read ahead: a group that cannot start a search is passed over at once
            p = k
            while p < j and is_digit(s[p]):
                p += 1
            if p - k < MIN_GROUP or not brand_first(s[k]) or (skip_first and k == i):
                k = p + 1
                continue
            read_group(s, j, &k, &gq[r0])
            ng = 1
        g = &gq[r0]
        if g.cnt >= MIN_GROUP and brand_first(s[g.s]) and not (skip_first and g.s == i):
            # the window's first four digits (a brand is told by them): its first group has three or more
            m = 0
            p = g.s
            while m < 4 and p < j:
                if is_digit(s[p]):
                    first4[m] = s[p]
                    m += 1
                p += 1
            A = 0
            B = 0
            nd = 0
            maxg = 0
            spaced = False
            best_h = -1
            h = 0
            while True:
                if h == ng:
                    if k >= j or ng == 8:
                        break
                    read_group(s, j, &k, &gq[(r0 + ng) & 7])
                    ng += 1
                q = &gq[(r0 + h) & 7]
                if q.cnt < MIN_GROUP:
                    break
                nd += q.cnt
                if nd > 19:
                    break
                if h > 0 and s[q.s - 1] == 32:
                    spaced = True
                if q.cnt > maxg:
                    maxg = q.cnt
                if q.cnt & 1:
                    tA = q.a + B
                    B = q.b + A
                else:
                    tA = q.a + A
                    B = q.b + B
                A = tA
                # inside a UUID only with dashes and groups of at most 12 (its longest)
                if nd >= 12 and m == 4 and A % 10 == 0 and brand_ok(first4, nd) \
                        and not (maxg <= 12 and not spaced and in_uuid(s, n, g.s, q.e)):
                    best_h = h
                h += 1
            if best_h >= 0:
                q = &gq[(r0 + best_h) & 7]
                if span_nd and g.s < span_j:  # overlaps the span being built: merged into it
                    if q.e > span_j:
                        span_j = q.e
                else:
                    if span_nd and add_pan(st, count, span_i, span_j, best, span_nd) < 0:
                        return -1
                    span_i = g.s
                    span_j = q.e
                    span_nd = 0
                    p = g.s
                    while p < span_j:
                        if is_digit(s[p]):
                            best[span_nd] = s[p]
                            span_nd += 1
                        p += 1
        ng -= 1
        r0 = (r0 + 1) & 7
    if span_nd and add_pan(st, count, span_i, span_j, best, span_nd) < 0:
        return -1
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
