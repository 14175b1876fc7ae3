#!/usr/bin/env python3
"""A stand-in for a lowband federation tunnel: terminate TLS, forward plaintext bytes.

    tls_front.py LISTEN_HOST:PORT CERT_PEM KEY_PEM BACKEND_HOST:PORT

Accepts TLS connections on LISTEN (presenting the certificate chain CERT_PEM), opens a plain TCP
connection to BACKEND for each and copies bytes both ways unchanged. Prints "listening" once
bound, then one JSON line per accepted connection, {"conn": n, "event": "open"}, and one per
finished connection, {"conn": n, "event": "close", "up": bytes client->backend, "down": bytes
backend->client}. A line "stats" on stdin is answered with {"event": "stats", "conns": n, "up":
total bytes client->backend, "down": total bytes backend->client} (open connections included).
Exits when stdin reaches end-of-file.
"""
import asyncio
import json
import ssl
import sys


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def pipe(reader, writer, counters, key):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for c in counters:
                c[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(argv):
    if len(argv) != 5:
        sys.exit(__doc__)
    listen, backend = split_addr(argv[1]), split_addr(argv[4])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(argv[2], argv[3])
    conns = [0]
    totals = {"up": 0, "down": 0}

    async def handle(c_reader, c_writer):
        conns[0] += 1
        n = conns[0]
        counter = {"up": 0, "down": 0}
        print(json.dumps({"conn": n, "event": "open"}), flush=True)
        try:
            b_reader, b_writer = await asyncio.open_connection(*backend)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(
            pipe(c_reader, b_writer, (counter, totals), "up"),
            pipe(b_reader, c_writer, (counter, totals), "down"),
        )
        print(json.dumps({"conn": n, "event": "close", **counter}), flush=True)

    server = await asyncio.start_server(handle, *listen, ssl=ctx)
    print("listening", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # EOF: the harness is done with us
            break
        if line.strip() == "stats":
            print(json.dumps({"event": "stats", "conns": conns[0], **totals}), flush=True)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
