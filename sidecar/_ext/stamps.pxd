# Resource stamps (the tenant) and the refusal of a resource. The twin:
# sidecar/rewrite/_stamps.py.

from sidecar._ext.state cimport CPlan, Stamp, St


cdef Stamp* find_stamp(CPlan* plan, const unsigned char* key, Py_ssize_t kn) noexcept
cdef Py_ssize_t apply_stamp(St* st, Stamp* stamp, Py_ssize_t tag_pos, Py_ssize_t vs,
                             Py_ssize_t ve) noexcept
cdef Py_ssize_t insert_stamps(St* st, Py_ssize_t end, Py_ssize_t start, int t) noexcept
cdef Py_ssize_t new_resource(St* st, Py_ssize_t end) noexcept
cdef int refusal(St* st, int t, Py_ssize_t s, Py_ssize_t e) noexcept
