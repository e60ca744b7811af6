# Per-source accounting (MaxConnectionsPerSource, MaxConnectionRatePerSource): the
# key is the client's address masked by SourceMask, hashed with SipHash-2-4 under a
# key drawn at random when the module loads, so an outsider cannot find offline
# addresses that share a victim's bucket. One atomic add per client, no lock. The
# table (structs.pxi) is shared by the app's routes across reloads.

cdef uint64_t SOURCE_KEY0 = 0
cdef uint64_t SOURCE_KEY1 = 0


cdef inline uint64_t rotl64(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void sip_round(uint64_t* v) noexcept nogil:
    v[0] += v[1]; v[1] = rotl64(v[1], 13); v[1] ^= v[0]; v[0] = rotl64(v[0], 32)
    v[2] += v[3]; v[3] = rotl64(v[3], 16); v[3] ^= v[2]
    v[0] += v[3]; v[3] = rotl64(v[3], 21); v[3] ^= v[0]
    v[2] += v[1]; v[1] = rotl64(v[1], 17); v[1] ^= v[2]; v[2] = rotl64(v[2], 32)


cdef uint64_t siphash128(uint64_t m0, uint64_t m1) noexcept nogil:
    """SipHash-2-4 of the 16 bytes m0, m1 under (SOURCE_KEY0, SOURCE_KEY1)."""
    cdef uint64_t v[4]
    cdef uint64_t m[3]
    cdef int i
    v[0] = SOURCE_KEY0 ^ 0x736f6d6570736575ULL
    v[1] = SOURCE_KEY1 ^ 0x646f72616e646f6dULL
    v[2] = SOURCE_KEY0 ^ 0x6c7967656e657261ULL
    v[3] = SOURCE_KEY1 ^ 0x7465646279746573ULL
    m[0] = m0
    m[1] = m1
    m[2] = (<uint64_t>16) << 56        # the length, in the last block
    for i in range(3):
        v[3] ^= m[i]
        sip_round(v)
        sip_round(v)
        v[0] ^= m[i]
    v[2] ^= 0xff
    sip_round(v)
    sip_round(v)
    sip_round(v)
    sip_round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


cdef inline uint64_t load_be64(const uint8_t* b) noexcept nogil:
    cdef uint64_t x = 0
    cdef int i
    for i in range(8):
        x = (x << 8) | b[i]
    return x


cdef void addr128(sockaddr_storage* ss, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """The address as 128 bits, an IPv4 one (or ::ffff:a.b.c.d) as ::ffff:a.b.c.d,
    so that CIDR lists and per-source keys see one form per client."""
    cdef sockaddr_in v4
    cdef const uint8_t* b
    if unmap_v4(ss, &v4):
        b = <const uint8_t*>&v4.sin_addr
        hi[0] = 0
        lo[0] = 0xffff00000000ULL | (<uint64_t>b[0] << 24) | (<uint64_t>b[1] << 16) \
            | (<uint64_t>b[2] << 8) | b[3]
    else:
        b = (<sockaddr_in6*>ss).sin6_addr.s6_addr
        hi[0] = load_be64(b)
        lo[0] = load_be64(b + 8)


cdef inline void mask128(uint64_t* hi, uint64_t* lo, int plen) noexcept nogil:
    """Keep the first plen bits (0..128)."""
    if plen <= 0:
        hi[0] = 0
        lo[0] = 0
    elif plen < 64:
        hi[0] &= ~(<uint64_t>0) << (64 - plen)
        lo[0] = 0
    elif plen == 64:
        lo[0] = 0
    elif plen < 128:
        lo[0] &= ~(<uint64_t>0) << (128 - plen)


cdef inline bint is_v4_mapped(uint64_t hi, uint64_t lo) noexcept nogil:
    return hi == 0 and (lo >> 32) == 0xffff


cdef int source_bucket(fp_persource* ps, sockaddr_storage* ss) noexcept nogil:
    """The client's bucket: its address masked by SourceMask, keyed-hashed."""
    cdef uint64_t hi, lo
    addr128(ss, &hi, &lo)
    mask128(&hi, &lo, 96 + ps.mask4 if is_v4_mapped(hi, lo) else ps.mask6)
    return <int>(siphash128(hi, lo) & (PERSOURCE_BUCKETS - 1))


cdef inline void persource_decref(fp_persource* ps) noexcept nogil:
    if fp_decref(&ps.refcnt) == 0:
        pthread_mutex_destroy(&ps.lock)
        free(ps.buckets)
        free(ps.counts)
        free(ps)


cdef bint persource_admit(fp_conn* c, fp_persource* ps) noexcept nogil:
    """Count the client against its source; False (and nothing counted) when
    that would exceed the limit."""
    cdef int* counts = <int*>fp_load_ptr(<void**>&ps.counts)
    cdef int b = -1
    if ps.limit > 0 and counts != NULL:
        b = source_bucket(ps, &c.peer)
        if fp_add_fetch_int(&counts[b], 1) > ps.limit:
            fp_add_fetch_int(&counts[b], -1)
            return False
    fp_incref(&ps.refcnt)
    c.persource = ps
    c.src_bucket = b
    return True


cdef void persource_release(fp_conn* c) noexcept nogil:
    if c.persource != NULL:
        if c.src_bucket >= 0:
            fp_add_fetch_int(&c.persource.counts[c.src_bucket], -1)
        persource_decref(c.persource)
        c.persource = NULL
