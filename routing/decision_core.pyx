# cython: language_level=3
"""Typed twin of ``routing/decision_core.py``: same names, same answers, flat data.

``OwnerTable`` keeps block hash -> owner mask in two arrays of 64-bit words
(open addressing, linear probing, at most half full), so a probe reads one slot
instead of a dict entry, a key object and a value object. ``depths`` is
``BlockOwners.depths`` (the same bisection, the same hints, so the same probes) in
C. Keys that are not Python ints in [0, 2**64) go to a dict beside the table.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from cpython.long cimport PyLong_AsUnsignedLongLong

from routing.prefix_index import BlockOwners

FLAT = True

#: The widest fleet a table serves: one bit per backend in a 64-bit mask.
MAX_BACKENDS = 64

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil


cdef inline uint64_t _spread(uint64_t x) nogil:
    """Mixes a key into a slot number (MurmurHash3's 64-bit finaliser): the lab's hashes
    are uniform already, but a caller's may be small consecutive ints."""
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    return x


cdef inline bint _as_key(object h, uint64_t* key):
    """Whether ``h`` is an int in [0, 2**64), and its value in ``key`` if so."""
    if type(h) is not int:
        return False
    try:
        key[0] = PyLong_AsUnsignedLongLong(h)
    except OverflowError:
        return False
    return True


cdef inline int _assign(uint64_t mask, Py_ssize_t depth, list out) except -1:
    """``out[i] = depth`` for every bit i set in ``mask`` (``assign_depth``); an ``out``
    too short for a mask raises IndexError, as the reference does."""
    while mask:
        out[__builtin_ctzll(mask)] = depth
        mask &= mask - 1
    return 0


cdef class OwnerTable:
    """``BlockOwners`` for up to 64 backends, as a flat table (see the module docstring)."""

    cdef uint64_t* _keys
    cdef uint64_t* _masks
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _used
    cdef dict _other
    cdef list _hints

    flat = True

    def __cinit__(self, bits=()):
        if len(bits) > MAX_BACKENDS:
            raise ValueError(f"an OwnerTable serves at most {MAX_BACKENDS} backends; got {len(bits)}")
        self._cap = 1024
        self._keys = <uint64_t*>calloc(self._cap, sizeof(uint64_t))
        self._masks = <uint64_t*>calloc(self._cap, sizeof(uint64_t))
        if self._keys == NULL or self._masks == NULL:
            raise MemoryError()
        self._used = 0
        self._other = {}
        #: The change points the previous ``depths`` found (``BlockOwners._hints``).
        self._hints = []

    def __dealloc__(self):
        free(self._keys)
        free(self._masks)

    cdef Py_ssize_t _slot(self, uint64_t key) noexcept:
        """The slot holding ``key``, or the empty one where it would go."""
        cdef Py_ssize_t m = self._cap - 1
        cdef Py_ssize_t i = <Py_ssize_t>(_spread(key) & <uint64_t>m)
        while self._masks[i] != 0 and self._keys[i] != key:
            i = (i + 1) & m
        return i

    cdef int _grow(self) except -1:
        cdef uint64_t* old_keys = self._keys
        cdef uint64_t* old_masks = self._masks
        cdef Py_ssize_t old_cap = self._cap, j, i, m
        cdef uint64_t* keys = <uint64_t*>calloc(old_cap * 2, sizeof(uint64_t))
        cdef uint64_t* masks = <uint64_t*>calloc(old_cap * 2, sizeof(uint64_t))
        if keys == NULL or masks == NULL:
            free(keys)
            free(masks)
            raise MemoryError()
        m = old_cap * 2 - 1
        for j in range(old_cap):
            if old_masks[j] != 0:
                i = <Py_ssize_t>(_spread(old_keys[j]) & <uint64_t>m)
                while masks[i] != 0:
                    i = (i + 1) & m
                keys[i] = old_keys[j]
                masks[i] = old_masks[j]
        self._keys, self._masks, self._cap = keys, masks, old_cap * 2
        free(old_keys)
        free(old_masks)
        return 0

    cdef int _set(self, object h, object bit) except -1:
        cdef uint64_t key, b
        cdef Py_ssize_t i
        if not _as_key(h, &key):
            self._other[h] = self._other.get(h, 0) | bit
            return 0
        b = bit
        i = self._slot(key)
        if self._masks[i] != 0:
            self._masks[i] |= b
            return 0
        if (self._used + 1) * 2 > self._cap:
            self._grow()
            i = self._slot(key)
        self._keys[i] = key
        self._masks[i] = b
        self._used += 1
        return 0

    cdef int _clear(self, object h, object bit) except -1:
        cdef uint64_t key, b
        cdef Py_ssize_t i, j, home, m
        if not _as_key(h, &key):
            mask = self._other.get(h)
            if mask is not None:
                mask &= ~bit
                if mask:
                    self._other[h] = mask
                else:
                    del self._other[h]
            return 0
        b = bit
        i = self._slot(key)
        if self._masks[i] == 0:
            return 0
        self._masks[i] &= ~b
        if self._masks[i] != 0:
            return 0
        # Backward-shift deletion: pull later entries of the run into the hole when
        # the hole lies on their probe path, so lookups never meet a false gap.
        self._used -= 1
        m = self._cap - 1
        j = i
        while True:
            j = (j + 1) & m
            if self._masks[j] == 0:
                break
            home = <Py_ssize_t>(_spread(self._keys[j]) & <uint64_t>m)
            if ((j - home) & m) >= ((j - i) & m):
                self._keys[i] = self._keys[j]
                self._masks[i] = self._masks[j]
                i = j
        self._masks[i] = 0
        return 0

    cdef uint64_t _get(self, object h) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t key
        if _as_key(h, &key):
            return self._masks[self._slot(key)]
        return self._other.get(h, 0)

    def set(self, h, bit):
        """Backend ``bit`` holds block ``h``."""
        self._set(h, bit)

    def clear(self, h, bit):
        """Backend ``bit`` no longer holds block ``h``."""
        self._clear(h, bit)

    def set_range(self, chain, Py_ssize_t start, Py_ssize_t end, bit):
        """``set(chain[i], bit)`` for i in [start, end): a segment of the in-flight table
        (``InflightTree``), which only a flat table keeps."""
        cdef Py_ssize_t i
        for i in range(start, end):
            self._set(chain[i], bit)

    def clear_range(self, chain, Py_ssize_t start, Py_ssize_t end, bit):
        """``clear(chain[i], bit)`` for i in [start, end)."""
        cdef Py_ssize_t i
        for i in range(start, end):
            self._clear(chain[i], bit)

    def mask(self, h):
        """The mask of the backends holding ``h`` (0: none)."""
        return self._get(h)

    def __len__(self):
        """Blocks some backend holds."""
        return self._used + len(self._other)

    def depths(self, chain, Py_ssize_t n, list out not None):
        """``BlockOwners.depths``: ``out[i]`` = leading blocks of ``chain[:n]`` backend i holds."""
        cdef uint64_t m_lo, m_last, m_hi, m
        cdef Py_ssize_t last, lo, hi, mid, at, h, k
        if n <= 0:
            return
        m_lo = self._get(chain[0])
        if not m_lo:
            return
        last = n - 1
        m_last = self._get(chain[last]) if last else m_lo
        _assign(m_last, n, out)
        lo = 0
        hints = self._hints
        found = []
        while m_lo != m_last:
            hi, m_hi = last, m_last
            for h in hints:
                for k in range(2):
                    at = h - k
                    if lo < at < hi:
                        m = self._get(chain[at])
                        if m == m_lo:
                            lo = at
                        else:
                            hi, m_hi = at, m
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                m = self._get(chain[mid])
                if m == m_lo:
                    lo = mid
                else:
                    hi, m_hi = mid, m
            _assign(m_lo & ~m_hi, hi, out)
            found.append(hi)
            lo, m_lo = hi, m_hi
        if found:
            self._hints = found[:4]


def owner_map(bits):
    """``decision_core.owner_map``: a flat ``OwnerTable`` for up to 64 backends."""
    if len(bits) <= MAX_BACKENDS:
        return OwnerTable(bits)
    return BlockOwners(bits)


def default_kv_costs(Py_ssize_t n, Py_ssize_t bs, prefill_tokens, hits, active_blocks, new_blocks):
    """``decision_core.default_kv_costs`` over C doubles, for the router's integer columns:
    the same floats (every operand is an int below 2**53, so each conversion is exact and
    each operation rounds as Python's)."""
    cdef Py_ssize_t i, size = min(len(prefill_tokens), len(hits), len(active_blocks), len(new_blocks))
    cdef double adjusted
    cdef Py_ssize_t pf, hit, active, new
    cdef list out = [None] * size
    for i in range(size):
        pf = prefill_tokens[i]
        hit = hits[i]
        active = active_blocks[i]
        new = new_blocks[i]
        adjusted = <double>(pf + n) / <double>bs - <double>hit
        if adjusted < 0.0:
            adjusted = 0.0
        out[i] = adjusted + <double>(active + new)
    return out
