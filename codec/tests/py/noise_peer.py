#!/usr/bin/env python3
"""An independent Noise peer (Python `noiseprotocol`) for lowband's interop tests.

Usage: noise_peer.py initiator|responder PROTOCOL_NAME LOCAL_SK_HEX REMOTE_PK_HEX|- PROLOGUE_HEX

Speaks one hex-encoded message per line on stdin/stdout:
  initiator: prints msg1 (payload b"py-init"), reads msg2 and prints its payload.
  responder: reads msg1 and prints its payload, prints msg2 (payload b"py-resp").
Then, for each transport message read, prints "<plaintext hex> <reply hex>" where the reply is
the encryption of b"py:" + plaintext. Exits at end of input.
"""
import sys

from noise.connection import Keypair, NoiseConnection


def main() -> None:
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

    def out(*parts: bytes) -> None:
        print(" ".join(p.hex() for p in parts), flush=True)

    def read() -> bytes:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        return bytes.fromhex(line.strip())

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
