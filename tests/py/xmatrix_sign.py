#!/usr/bin/env python3
"""Sign a federation request as a homeserver: print its `Authorization: X-Matrix` value.

    xmatrix_sign.py SIGNING_KEY_FILE ORIGIN DESTINATION METHOD URI [CONTENT_JSON]

SIGNING_KEY_FILE is in Synapse's format (`ed25519 <version> <base64 seed>`). The signed JSON is
{method, uri, origin, destination[, content]} as the server-server API's request
authentication describes; signing uses `signedjson` (a Synapse dependency).
"""
import json
import sys

import signedjson.key
import signedjson.sign


def main(argv):
    if len(argv) not in (6, 7):
        sys.exit(__doc__)
    _, key_file, origin, destination, method, uri, *content = argv
    with open(key_file) as f:
        key = signedjson.key.read_signing_keys(f)[0]
    req = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content:
        req["content"] = json.loads(content[0])
    signed = signedjson.sign.sign_json(req, origin, key)
    key_id = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][key_id]
    print(
        f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'
    )


if __name__ == "__main__":
    main(sys.argv)
