# PROXY protocol in (haproxy.org/download/2.9/doc/proxy-protocol.txt): the parser.
# A pure function of the bytes peeked so far, so it can be fuzzed from Python
# (see parse_proxy_header_for_tests in api.pxi). It never reads past n.

cdef enum:
    PP_NEED_MORE = 0
    PP_INVALID = -1
    PP_V1_MAX = 107             # the longest v1 line, CRLF included


cdef bint pp_port(const uint8_t* s, size_t n, uint16_t* out) noexcept nogil:
    cdef size_t i
    cdef uint32_t v = 0
    if n == 0 or n > 5:
        return False
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return False
        v = v * 10 + (s[i] - 48)
    if v > 65535:
        return False
    out[0] = <uint16_t>v
    return True


cdef bint pp_addr(int family, const uint8_t* s, size_t n, sockaddr_storage* ss,
                  uint16_t port) noexcept nogil:
    """Fill ss from the text address s[0:n] and a host-order port."""
    cdef char text[48]
    cdef sockaddr_in* a4 = <sockaddr_in*>ss
    cdef sockaddr_in6* a6 = <sockaddr_in6*>ss
    if n == 0 or n >= sizeof(text):
        return False
    memcpy(text, s, n)
    text[n] = 0
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_INET:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        return inet_pton(AF_INET, text, &a4.sin_addr) == 1
    a6.sin6_family = AF_INET6
    a6.sin6_port = htons(port)
    return inet_pton(AF_INET6, text, &a6.sin6_addr) == 1


cdef int proxy_parse_v1(const uint8_t* b, size_t n, sockaddr_storage* src,
                        sockaddr_storage* dst, bint* carried) noexcept nogil:
    # "PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n", single spaces
    cdef size_t limit = n if n < PP_V1_MAX else PP_V1_MAX
    cdef size_t end = 0, i, start, ntok = 0
    cdef const uint8_t* tok[6]
    cdef size_t toklen[6]
    cdef uint16_t sport, dport
    cdef int family
    for i in range(limit):
        if b[i] == 10:
            end = i + 1
            break
    if end == 0:
        return PP_NEED_MORE if n < PP_V1_MAX else PP_INVALID
    if end < 9 or b[end - 2] != 13:
        return PP_INVALID
    start = 6
    for i in range(6, end - 1):
        if b[i] == 32 or i == end - 2:
            if i == start or ntok == 6:
                return PP_INVALID
            tok[ntok] = b + start
            toklen[ntok] = i - start
            ntok += 1
            start = i + 1
    if toklen[0] == 7 and memcmp(tok[0], b"UNKNOWN", 7) == 0:
        return <int>end             # the balancer in front does not know: keep the peer
    if toklen[0] != 4 or memcmp(tok[0], b"TCP", 3) != 0 or ntok != 5:
        return PP_INVALID
    if tok[0][3] == 52:             # '4'
        family = AF_INET
    elif tok[0][3] == 54:           # '6'
        family = AF_INET6
    else:
        return PP_INVALID
    if not (pp_port(tok[3], toklen[3], &sport) and pp_port(tok[4], toklen[4], &dport)
            and pp_addr(family, tok[1], toklen[1], src, sport)
            and pp_addr(family, tok[2], toklen[2], dst, dport)):
        return PP_INVALID
    carried[0] = True
    return <int>end


cdef int proxy_parse_v2(const uint8_t* b, size_t n, sockaddr_storage* src,
                        sockaddr_storage* dst, bint* carried) noexcept nogil:
    cdef size_t total, addrlen, off, m = n if n < 12 else 12
    cdef int cmd, family, transport
    cdef sockaddr_in* s4 = <sockaddr_in*>src
    cdef sockaddr_in* d4 = <sockaddr_in*>dst
    cdef sockaddr_in6* s6 = <sockaddr_in6*>src
    cdef sockaddr_in6* d6 = <sockaddr_in6*>dst
    if memcmp(b, b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a", m) != 0:
        return PP_INVALID
    if n < 16:
        return PP_NEED_MORE
    if (b[12] & 0xF0) != 0x20:
        return PP_INVALID
    cmd = b[12] & 0x0F
    if cmd > 1:
        return PP_INVALID
    total = 16 + ((<size_t>b[14] << 8) | b[15])
    if total > PP_MAX:
        return PP_INVALID
    if n < total:
        return PP_NEED_MORE
    family = b[13] >> 4
    transport = b[13] & 0x0F
    if family > 3 or transport > 2:
        return PP_INVALID
    addrlen = 0 if family == 0 else 12 if family == 1 else 36 if family == 2 else 216
    if total - 16 < addrlen:
        return PP_INVALID
    # TLVs follow the addresses: skipped, but each must fit.
    off = 16 + addrlen
    while off < total:
        if total - off < 3:
            return PP_INVALID
        off += 3 + ((<size_t>b[off + 1] << 8) | b[off + 2])
        if off > total:
            return PP_INVALID
    # LOCAL (the balancer's own checks), UNSPEC, unix or datagram: keep the peer.
    if cmd == 0 or transport != 1 or (family != 1 and family != 2):
        return <int>total
    memset(src, 0, sizeof(sockaddr_storage))
    memset(dst, 0, sizeof(sockaddr_storage))
    if family == 1:
        s4.sin_family = d4.sin_family = AF_INET
        memcpy(&s4.sin_addr, b + 16, 4)
        memcpy(&d4.sin_addr, b + 20, 4)
        memcpy(&s4.sin_port, b + 24, 2)
        memcpy(&d4.sin_port, b + 26, 2)
    else:
        s6.sin6_family = d6.sin6_family = AF_INET6
        memcpy(&s6.sin6_addr, b + 16, 16)
        memcpy(&d6.sin6_addr, b + 32, 16)
        memcpy(&s6.sin6_port, b + 48, 2)
        memcpy(&d6.sin6_port, b + 50, 2)
    carried[0] = True
    return <int>total


cdef size_t proxy_need(const uint8_t* b, size_t n) noexcept nogil:
    """For a header proxy_parse found incomplete in b[0:n]: the bytes there must be
    before parsing again can tell more. A v2 header says its length after 16
    bytes; a v1 line ends at a newline that may be the next byte (it is at most
    PP_V1_MAX long: a constant cost)."""
    cdef size_t total
    if n == 0 or b[0] != 0x0D:
        return n + 1
    if n < 16:
        return 16                   # the fixed part says how long the rest is
    total = 16 + ((<size_t>b[14] << 8) | b[15])
    return total if total <= PP_MAX else PP_MAX


cdef int proxy_parse(const uint8_t* b, size_t n, sockaddr_storage* src,
                     sockaddr_storage* dst, bint* carried) noexcept nogil:
    """The length of the complete PROXY header at b[0:n], PP_NEED_MORE, or
    PP_INVALID. carried: it names the client (src) and the address it dialled
    (dst); a LOCAL or UNKNOWN header does not."""
    cdef size_t m = n if n < 6 else 6
    carried[0] = False
    if n == 0:
        return PP_NEED_MORE
    if b[0] == 0x0D:
        return proxy_parse_v2(b, n, src, dst, carried)
    if memcmp(b, b"PROXY ", m) != 0:
        return PP_INVALID
    if n < 6:
        return PP_NEED_MORE
    return proxy_parse_v1(b, n, src, dst, carried)
