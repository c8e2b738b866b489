#!/usr/bin/env python3
"""The ceiling of the backlog case with Dependency-Track on: a plain client
uploads N SBOMs of the backlog's shape (CycloneDX 1.5, one component whose
description is about 133 KiB of base64 noise, as irbench's `payload`) to
Dependency-Track, CONCURRENCY at a time, each `PUT /api/v1/bom` with
autoCreate (version "unset", the operator's default) and then polled at `GET /api/v1/event/token/{token}` every
second (the operator's pace) until processed. No parent projects: the
operator's hierarchy of collections is work this ceiling leaves out.
Prints one JSON line: uploads, failures, done_s.

usage: dtceiling.py URL KEY PREFIX N CONCURRENCY
"""
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url, key, method, path, body=None):
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"X-Api-Key": key, "Accept": "application/json", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read() or b"null")


def bom(i: int) -> bytes:
    filler = base64.b64encode(os.urandom(100 * 1024)).decode()
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "metadata": {
            "component": {"type": "application", "name": "bench"},
            "tools": {"components": [{"type": "application", "name": "bench"}]},
        },
        "components": [{"type": "library", "name": "filler", "description": filler}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def upload(url, key, prefix, i) -> bool:
    try:
        answer = call(url, key, "PUT", "/api/v1/bom", {
            "projectName": f"{prefix}-{i}",
            "projectVersion": "unset",
            "autoCreate": True,
            "bom": base64.b64encode(bom(i)).decode(),
        })
        token = answer["token"]
        while True:
            time.sleep(1)
            if call(url, key, "GET", f"/api/v1/event/token/{token}").get("processing") is False:
                return True
    except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
        print(f"upload {i}: {e}", file=sys.stderr)
        return False


def main():
    url, key, prefix, n, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda i: upload(url, key, prefix, i), range(n)))
    print(json.dumps({"uploads": sum(done), "failures": len(done) - sum(done),
                      "done_s": time.monotonic() - started}))


if __name__ == "__main__":
    main()
