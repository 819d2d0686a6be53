"""A simulated TFTP client for the state-machine tests: no sockets, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from ramboot.proto import tftp_core as tftp


@dataclass
class Run:
    data: bytes
    oack: dict[str, str] | None
    outcome: str | None
    sent: list[bytes] = field(default_factory=list)  # every datagram the machine emitted
    blocks_on_wire: list[int] = field(default_factory=list)  # DATA block numbers, in order
    now: float = 0.0


def datagrams(machine: tftp.ReadTransfer, out) -> list[bytes]:
    """The datagrams a step's output puts on the wire: runs split as UDP GSO splits them."""
    seg, dgrams = machine.segment, []
    for item in out:
        item = bytes(item)
        if machine.runs and len(item) > seg and item[1] == tftp.DATA:
            dgrams += [item[i : i + seg] for i in range(0, len(item), seg)]
        else:
            dgrams.append(item)
    return dgrams


def run(machine: tftp.ReadTransfer, drop=lambda i, pkt: False, dup_acks: bool = False,
        step_limit: int = 5_000_000, read_ahead: bool = False) -> Run:
    """Drive `machine` like an RFC 7440 client: ACK the last in-order block after each burst.

    `drop(i, pkt)` loses the i-th datagram the machine sends. `dup_acks` sends every
    ACK twice (the network duplicating packets). With nothing delivered, time jumps
    to the machine's deadline. `read_ahead` calls it after every step, as the server does.
    """
    now = 0.0
    out = machine.start(now)
    r = Run(b"", None, None)
    data = bytearray()
    expected = 1
    finished = False
    steps = 0
    while not machine.done:
        steps += 1
        assert steps < step_limit, "simulation did not converge"
        ack: int | None = None
        out = datagrams(machine, out)
        if read_ahead:
            machine.read_ahead()
        for pkt in out:
            i = len(r.sent)
            r.sent.append(pkt)
            if drop(i, pkt):
                continue
            p = tftp.parse(pkt)
            if isinstance(p, tftp.OAck):
                r.oack = p.options
                ack = 0
            elif isinstance(p, tftp.Data):
                r.blocks_on_wire.append(p.block)
                if p.block == expected & 0xFFFF and not finished:
                    data += p.payload
                    expected += 1
                    if len(p.payload) < machine.neg.blksize:
                        finished = True
                ack = (expected - 1) & 0xFFFF
            elif isinstance(p, tftp.Error):
                pass
        if ack is None:
            if machine.deadline is None:
                break
            now = machine.deadline
            out = machine.on_timer(now)
            continue
        now += 0.001
        out = list(machine.on_packet(tftp.Ack(ack).encode(), now))
        if dup_acks:
            out += machine.on_packet(tftp.Ack(ack).encode(), now)
    r.data, r.outcome, r.now = bytes(data), machine.outcome, now
    return r


def rrq(name: str = "f", mode: str = "octet", **options) -> tftp.Request:
    return tftp.Request(tftp.RRQ, name, mode, {k: str(v) for k, v in options.items()})
