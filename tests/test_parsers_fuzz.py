"""The relay's two parsers of untrusted bytes, the PROXY header and the TLS
ClientHello, fuzzed through their test entry points. Each input is copied to end
right at an inaccessible page, so a read past it crashes the test process."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._relay import parse_client_hello_for_tests as parse_hello
from fastproxy._relay import parse_proxy_header_for_tests as parse_proxy
from fastproxy._relay import preface_need_for_tests as preface_need

SNI_MAX = 16384
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


def v1(family: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, dst: str, sport: int, dport: int, tlvs: bytes) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs
    family = 0x11 if a.version == 4 else 0x21
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


tlv = st.binary(max_size=40).flatmap(
    lambda value: st.integers(0, 255).map(
        lambda kind: bytes([kind]) + struct.pack("!H", len(value)) + value
    )
)


def same(parsed: tuple, expected: tuple) -> bool:
    """(length, (ip, port), (ip, port)) equal up to how the addresses are spelt."""

    def norm(addr: tuple) -> tuple:
        return (ipaddress.ip_address(addr[0]), addr[1])

    return parsed[0] == expected[0] and all(
        norm(a) == norm(b) for a, b in zip(parsed[1:], expected[1:])
    )


def check_outcome(result: object, data: bytes) -> None:
    if isinstance(result, tuple):
        assert 0 < result[0] <= len(data)
    else:
        assert result in (0, -1)


@FUZZ
@given(st.binary(max_size=600))
def test_proxy_parser_takes_any_bytes(data: bytes) -> None:
    check_outcome(parse_proxy(data), data)


@FUZZ
@given(st.binary(max_size=600))
def test_proxy_parser_takes_any_bytes_after_a_signature(tail: bytes) -> None:
    for head in (V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", V2_SIGNATURE + b"\x21\x11"):
        check_outcome(parse_proxy(head + tail), head + tail)


@FUZZ
@given(
    st.one_of(
        st.tuples(st.just("TCP4"), ipv4, ipv4, ports, ports),
        st.tuples(st.just("TCP6"), ipv6, ipv6, ports, ports),
    ),
    st.binary(max_size=64),
)
def test_v1_round_trips(fields: tuple, payload: bytes) -> None:
    family, src, dst, sport, dport = fields
    header = v1(family, src, dst, sport, dport)
    assert same(parse_proxy(header + payload), (len(header), (src, sport), (dst, dport)))
    for cut in range(len(header)):
        assert parse_proxy(header[:cut]) == 0  # a prefix: wait for more


@FUZZ
@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.lists(tlv, max_size=5).map(b"".join),
    st.binary(max_size=64),
)
def test_v2_round_trips_and_skips_tlvs(addrs: tuple, sport: int, dport: int, tlvs: bytes,
                                       payload: bytes) -> None:  # fmt: skip
    src, dst = addrs
    header = v2(src, dst, sport, dport, tlvs)
    parsed = parse_proxy(header + payload)
    if len(header) > 536:  # longer than the relay reads: refused, never overrun
        assert parsed == -1
        return
    assert same(parsed, (len(header), (src, sport), (dst, dport)))
    assert parse_proxy(header[: len(header) - 1]) == 0
    if tlvs:  # a TLV claiming more than the header holds
        overlong = bytearray(header)
        overlong[-len(tlvs) + 2] = 0xFF
        assert parse_proxy(bytes(overlong)) == -1


# -- ClientHello -------------------------------------------------------------------

hostname = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True
)


def extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(name: str | None, session: bytes, suites: int, before: list[bytes],
                 after: list[bytes]) -> bytes:  # fmt: skip
    """A ClientHello handshake message (no record framing)."""
    exts = list(before)
    if name is not None:
        entry = b"\x00" + struct.pack("!H", len(name)) + name.encode()
        exts.append(extension(0, struct.pack("!H", len(entry)) + entry))
    exts += after
    blob = b"".join(exts)
    body = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(session)])
        + session
        + struct.pack("!H", 2 * suites)
        + b"\x13\x01" * suites
        + b"\x01\x00"
        + struct.pack("!H", len(blob))
        + blob
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, sizes: list[int]) -> bytes:
    """Frame the message in TLS handshake records of the given sizes (cycled)."""
    out, i, k = b"", 0, 0
    while i < len(message):
        size = sizes[k % len(sizes)] if sizes else len(message)
        chunk = message[i : i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
        i += size
        k += 1
    return out


other_extension = st.tuples(st.integers(1, 65535), st.binary(max_size=30)).map(
    lambda t: extension(*t)
)
hellos = st.builds(
    lambda name, session, suites, before, after, sizes: (
        name,
        records(client_hello(name, session, suites, before, after), sizes),
    ),
    st.one_of(st.none(), hostname),
    st.binary(max_size=32),
    st.integers(1, 20),
    st.lists(other_extension, max_size=4),
    st.lists(other_extension, max_size=4),
    st.lists(st.integers(1, 300), max_size=4),
)


@FUZZ
@given(hellos, st.binary(max_size=32))
def test_client_hello_round_trips_across_records(hello: tuple, payload: bytes) -> None:
    name, data = hello
    assert parse_hello(data + payload) == name
    for cut in (0, 1, 4, 5, len(data) // 2, len(data) - 1):
        assert parse_hello(data[:cut]) == 0  # truncated: wait for more


@FUZZ
@given(hellos, st.data())
def test_client_hello_mutations_never_crash(hello: tuple, draw: st.DataObject) -> None:
    _, data = hello
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        mutated[draw.draw(st.integers(0, len(mutated) - 1))] = draw.draw(st.integers(0, 255))
    result = parse_hello(bytes(mutated))
    assert result is None or result in (0, -1) or isinstance(result, str)


@FUZZ
@given(st.binary(max_size=2000))
def test_client_hello_takes_any_bytes(data: bytes) -> None:
    for blob in (data, b"\x16\x03\x01" + data, b"\x16\x03\x01\x00\x80\x01\x00\x00\x7c" + data):
        result = parse_hello(blob)
        assert result is None or result in (0, -1) or isinstance(result, str)


# -- How long the relay waits before parsing again (issue 19) ------------------------


def parses_byte_by_byte(data: bytes, proxy: bool) -> int:
    """How often the relay parses a preface sent one byte per segment: only once as
    many bytes are there as the last parse said it lacks. Each wait it is told must
    be for bytes not yet there, and never for more than the preface holds (else a
    client that sent all of it would wait for the timeout)."""
    parses, need = 0, 0
    for cut in range(1, len(data) + 1):
        if cut < need:
            continue
        parses += 1
        need = preface_need(data[:cut], proxy)
        if need == 0:
            return parses
        assert cut < need <= len(data), (cut, need, len(data))
    raise AssertionError("never complete")


@FUZZ
@given(hellos)
def test_waits_are_for_bytes_the_hello_still_owes(hello: tuple) -> None:
    _, data = hello
    assert parses_byte_by_byte(data, proxy=False) <= 64


@FUZZ
@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.lists(tlv, max_size=5).map(b"".join),
)
def test_waits_are_for_bytes_the_proxy_header_still_owes(
    addrs: tuple, sport: int, dport: int, tlvs: bytes
) -> None:
    header = v2(*addrs, sport, dport, tlvs)
    if len(header) <= 536:
        assert parses_byte_by_byte(header, proxy=True) == 3  # signature, length, all
    v1_header = v1("TCP4" if ":" not in addrs[0] else "TCP6", *addrs, sport, dport)
    parses_byte_by_byte(v1_header, proxy=True)  # a newline may be next: every byte


def largest_hello(record: int) -> bytes:
    """A ClientHello of (nearly) SNI_MAX bytes on the wire, in records of `record` bytes."""
    size = SNI_MAX
    while size + 5 * -(-size // record) > SNI_MAX:
        size -= 1
    body = b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    exts = extension(21, bytes(size - 4 - len(body) - 2 - 4))
    message = b"\x01" + (len(body) + 2 + len(exts)).to_bytes(3, "big") + body
    message += struct.pack("!H", len(exts)) + exts
    assert len(message) == size
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(message[i : i + record])) + message[i : i + record]
        for i in range(0, size, record)
    )


def test_a_trickled_hello_is_parsed_a_bounded_number_of_times() -> None:
    """One byte per segment used to cost a parse (and a peek) of everything so far
    per byte: quadratic. The number of parses is now bounded whatever the records."""
    for record in (1, 2, 7, 100, 16384):
        data = largest_hello(record)
        assert SNI_MAX - 6 <= len(data) <= SNI_MAX
        assert parse_hello(data) is None
        assert parses_byte_by_byte(data, proxy=False) <= 64, record
