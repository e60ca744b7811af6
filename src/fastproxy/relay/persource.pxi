# MaxConnectionsPerSource: one atomic add per accepted client, no lock. The
# table (structs.pxi) is shared by the app's routes across reloads.

cdef inline void persource_decref(fp_persource* ps) noexcept nogil:
    if fp_decref(&ps.refcnt) == 0:
        free(ps)


cdef int source_bucket(sockaddr_storage* ss) noexcept nogil:
    """The client's bucket; an IPv4 client seen as ::ffff:a.b.c.d hashes as IPv4."""
    cdef sockaddr_storage v4
    if ss.ss_family == AF_INET6 and unmap_v4(ss, <sockaddr_in*>&v4):
        return <int>(addr_hash(&v4) & (PERSOURCE_BUCKETS - 1))
    return <int>(addr_hash(ss) & (PERSOURCE_BUCKETS - 1))


cdef bint persource_admit(fp_conn* c, fp_persource* ps) noexcept nogil:
    """Count the client against its address; False (and nothing counted) when
    that would exceed the limit."""
    cdef int b = source_bucket(&c.peer)
    if fp_add_fetch_int(&ps.counts[b], 1) > ps.limit:
        fp_add_fetch_int(&ps.counts[b], -1)
        return False
    fp_incref(&ps.refcnt)
    c.persource = ps
    c.src_bucket = b
    return True


cdef void persource_release(fp_conn* c) noexcept nogil:
    if c.persource != NULL:
        fp_add_fetch_int(&c.persource.counts[c.src_bucket], -1)
        persource_decref(c.persource)
        c.persource = NULL
