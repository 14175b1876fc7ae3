#!/usr/bin/env python3
"""A `.well-known/matrix/server` endpoint over TLS, for server discovery tests.

    wellknown.py LISTEN_HOST:PORT CERT_PEM KEY_PEM BODY [CACHE_CONTROL]

Answers `GET /.well-known/matrix/server` with 200, `Content-Type: application/json`, the
body BODY (sent as given) and, if given, a Cache-Control header; anything else gets 404.
Prints "listening" once bound, then one JSON line per request: {"path": .., "host": ..}.
Exits when stdin reaches end-of-file.
"""
import http.server
import json
import ssl
import sys
import threading


def main(argv):
    if len(argv) not in (5, 6):
        sys.exit(__doc__)
    host, _, port = argv[1].rpartition(":")
    body = argv[4].encode()
    cache_control = argv[5] if len(argv) == 6 else None

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            print(json.dumps({"path": self.path, "host": self.headers.get("Host")}), flush=True)
            if self.path == "/.well-known/matrix/server":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if cache_control:
                    self.send_header("Cache-Control", cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(argv[2], argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    for _ in sys.stdin:
        pass
    server.shutdown()


if __name__ == "__main__":
    main(sys.argv)
