# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The relay's two parsers of untrusted bytes, compiled from the very .pxi files the
# relay includes, behind two C entry points for the libFuzzer harnesses (proxy.c,
# hello.c). Nothing here touches Python: the harnesses never initialise it.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset

from fastproxy.includes.system cimport *
from fastproxy.includes.openssl cimport *  # structs.pxi names SSL

include "../src/fastproxy/relay/structs.pxi"
include "../src/fastproxy/relay/proxyproto.pxi"
include "../src/fastproxy/relay/sni.pxi"


cdef public int fuzz_proxy_parse(const uint8_t* b, size_t n, size_t* need) noexcept nogil:
    """proxy_parse as the relay calls it; need: proxy_need when incomplete."""
    cdef sockaddr_storage src, dst
    cdef bint carried = False
    cdef int rc = proxy_parse(b, n, &src, &dst, &carried)
    need[0] = proxy_need(b, n) if rc == PP_NEED_MORE else 0
    return rc


cdef public int fuzz_sni_parse(const uint8_t* b, size_t n, uint8_t* hello,
                               uint8_t** name, size_t* name_len,
                               size_t* want) noexcept nogil:
    """sni_parse as the relay calls it; hello: SNI_MAX bytes."""
    return sni_parse(b, n, hello, name, name_len, want)


cdef public size_t fuzz_sni_max() noexcept nogil:
    return SNI_MAX


cdef public size_t fuzz_pp_max() noexcept nogil:
    return PP_MAX
