"""Hypothesis: the TFTP codec round-trips, and random bytes never crash the codec or a transfer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ramboot.proto import tftp_core as tftp
from tftp_sim import rrq, run

_text = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=40)
_opts = st.dictionaries(_text.map(str.lower), st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=10), max_size=5)

packets = st.one_of(
    st.builds(tftp.Request, st.sampled_from([tftp.RRQ, tftp.WRQ]),
              st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), min_size=1, max_size=60),
              st.sampled_from(["octet", "netascii", "mail"]), _opts),
    st.builds(tftp.Data, st.integers(0, 65535), st.binary(max_size=1500)),
    st.builds(tftp.Ack, st.integers(0, 65535)),
    st.builds(tftp.Error, st.integers(0, 65535), st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=40)),
    st.builds(tftp.OAck, _opts.filter(bool)),
)


@given(packets)
def test_round_trip(pkt):
    assert tftp.parse(pkt.encode()) == pkt


@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_typed_error(raw):
    try:
        tftp.parse(raw)
    except tftp.MalformedPacket:
        pass


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=20), max_size=30), st.lists(st.integers(0, 65535), max_size=30))
def test_random_packets_never_crash_a_transfer(junk, acks):
    m = tftp.ReadTransfer(rrq(blksize=16, windowsize=4), tftp.BytesSource(bytes(range(256)) * 3))
    m.start(0.0)
    now = 0.0
    for raw in junk + [tftp.Ack(a).encode() for a in acks]:
        now += 0.3
        m.on_packet(raw, now)
        m.on_timer(now)
        assert m.acked <= m.sent and m.bytes_sent <= 768
        if m.done:
            break


@settings(max_examples=60)
@given(st.binary(max_size=5000), st.integers(8, 700), st.integers(1, 20),
       st.sets(st.integers(0, 200), max_size=40))
def test_any_loss_pattern_delivers_exact_bytes(data, blksize, windowsize, lost):
    """Each datagram index in `lost` is dropped once; the transfer still completes exactly."""
    m = tftp.ReadTransfer(rrq(blksize=blksize, windowsize=windowsize), tftp.BytesSource(data),
                          tftp.Limits(max_retries=50, max_unconfirmed_retries=50))
    r = run(m, drop=lambda i, p: i in lost)
    assert r.outcome == "ok" and r.data == data


@settings(max_examples=60)
@given(st.binary(max_size=5000), st.integers(8, 700), st.integers(1, 20),
       st.sets(st.integers(0, 200), max_size=40), st.booleans())
def test_runs_and_read_ahead_put_the_same_datagrams_on_the_wire(data, blksize, windowsize, lost, dup_acks):
    """The shell's mode (runs for GSO, read-ahead after each send) changes no datagram, nor their order."""
    def machine(runs):
        return tftp.ReadTransfer(rrq(blksize=blksize, windowsize=windowsize), tftp.BytesSource(data),
                                 tftp.Limits(max_retries=50, max_unconfirmed_retries=50), runs=runs)

    plain = run(machine(False), drop=lambda i, p: i in lost, dup_acks=dup_acks)
    batched = run(machine(True), drop=lambda i, p: i in lost, dup_acks=dup_acks, read_ahead=True)
    assert batched.sent == plain.sent and batched.data == data
