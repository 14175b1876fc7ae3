#!/usr/bin/env python3
"""An independent Noise peer (Python `noiseprotocol`) for lowband's interop tests.

Raw Noise:
  noise_peer.py initiator|responder PROTOCOL_NAME LOCAL_SK_HEX REMOTE_PK_HEX|- PROLOGUE_HEX
lowband link layer (wire layout of codec/src/noise/link.rs, reimplemented here from its docs):
  noise_peer.py link-initiator|link-responder IK|KK LOCAL_SK_HEX REMOTE_PK_HEX|- PROTOCOL DICT REKEY_INTERVAL

Speaks one hex-encoded message per line on stdin/stdout:
  initiator: prints msg1 (payload b"py-init"), reads msg2 and prints its payload.
  responder: reads msg1 and prints its payload, prints msg2 (payload b"py-resp").
Then, for each transport message read, prints "<plaintext hex> <reply hex>" where the reply is
the encryption of b"py:" + plaintext. Exits at end of input.
"""
import sys

from noise.connection import Keypair, NoiseConnection


def out(*parts: bytes) -> None:
    print(" ".join(p.hex() for p in parts), flush=True)


def read() -> bytes:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return bytes.fromhex(line.strip())


def rotate_out(msg: bytes) -> bytes:
    """Noise message -> wire: e[31] first (its top bit is 0: the handshake type bit)."""
    return msg[31:32] + msg[0:31] + msg[32:]


def rotate_in(wire: bytes) -> bytes:
    return wire[1:32] + wire[0:1] + wire[32:]


class LinkTransport:
    """Explicit truncated nonce, header as AD, key epoch = nonce // rekey_interval."""

    def __init__(self, tx, rx, sid: int, interval: int):
        self.tx, self.rx, self.sid, self.interval = tx, rx, sid, interval
        self.tx_n = 0
        self.tx_epoch = 0
        self.rx_epoch = 0
        self.next_expected = 0

    def seal(self, plaintext: bytes) -> bytes:
        n = self.tx_n
        epoch = n // self.interval
        while self.tx_epoch < epoch:
            self.tx.rekey()
            self.tx_epoch += 1
        header = bytes([0x80 | (epoch & 1) << 6 | self.sid, n & 0xFF])
        self.tx.set_nonce(n)
        self.tx_n = n + 1
        return header + self.tx.encrypt_with_ad(header, plaintext)

    def open(self, packet: bytes) -> bytes:
        b0, low = packet[0], packet[1]
        assert b0 & 0x80 and b0 & 0x3F == self.sid, "not our transport packet"
        nxt = self.next_expected
        diff = (low - nxt) & 0xFF
        if diff >= 128:
            diff -= 256
        n = nxt + diff
        # In-order delivery with nonce gaps from on-demand rekeys: try the nearest nonce, then
        # the first matching nonce of the next epochs.
        candidates = [n] + [
            s + ((low - s) & 0xFF)
            for s in ((nxt // self.interval + k) * self.interval for k in (1, 2))
        ]
        for n in candidates:
            epoch = n // self.interval
            if epoch & 1 != (b0 >> 6) & 1 or epoch < self.rx_epoch:
                continue
            while self.rx_epoch < epoch:
                self.rx.rekey()
                self.rx_epoch += 1
            self.rx.set_nonce(n)
            plain = self.rx.decrypt_with_ad(packet[:2], packet[2:])
            self.next_expected = n + 1
            return plain
        raise ValueError("no candidate nonce")


def link(role: str) -> None:
    pattern, sk, rpk, protocol, dict_version, interval = sys.argv[2:8]
    prologue = b"lowband" + bytes([int(protocol)]) + int(dict_version).to_bytes(2, "big")
    conn = NoiseConnection.from_name(f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s".encode())
    if role == "link-initiator":
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(sk))
    if rpk != "-":
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(rpk))
    conn.set_prologue(prologue)
    conn.start_handshake()
    if role == "link-initiator":
        out(rotate_out(bytes(conn.write_message(b"py-early"))))
        wire = read()
        payload = bytes(conn.read_message(rotate_in(wire)))
        status = payload[:1]
        assert status in (b"", b"\x00"), f"refused {status!r}"
        out(payload[1:])
    else:
        early = bytes(conn.read_message(rotate_in(read())))
        out(early)
        wire = rotate_out(bytes(conn.write_message(b"\x00py-0rtt-resp" if early else b"")))
        out(wire)
    assert conn.handshake_finished
    proto = conn.noise_protocol
    t = LinkTransport(proto.cipher_state_encrypt, proto.cipher_state_decrypt, wire[0] & 0x3F, int(interval))
    out(bytes([t.sid]))
    while True:
        plain = t.open(read())
        out(plain, t.seal(b"py:" + plain))


def main() -> None:
    if sys.argv[1].startswith("link-"):
        link(sys.argv[1])
        return
    role, name, sk, rpk, prologue = sys.argv[1:6]
    conn = NoiseConnection.from_name(name.encode())
    if role == "initiator":
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(sk))
    if rpk != "-":
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(rpk))
    conn.set_prologue(bytes.fromhex(prologue))
    conn.start_handshake()

    if role == "initiator":
        out(conn.write_message(b"py-init"))
        out(conn.read_message(read()))
    else:
        out(conn.read_message(read()))
        out(conn.write_message(b"py-resp"))
    assert conn.handshake_finished
    while True:
        plain = conn.decrypt(read())
        out(plain, conn.encrypt(b"py:" + plain))


if __name__ == "__main__":
    main()
