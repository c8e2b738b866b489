#!/usr/bin/env python3
"""Writes N environment tokens, one per line, signed HS256 with KEY as
insights-remote mints them (the same claims, an `iat`): a token per tenant
for the many-tenants benchmark, without N runs of `generate-token`.

usage: tokens.py KEY N FILE
"""
import base64
import hashlib
import hmac
import json
import sys
import time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def post_status(url: str, body: bytes, authorization: str, timeout: float) -> int:
    """POSTs JSON on a new connection; the HTTP status, or 0 when no
    answer came (refused, reset, timed out)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def token(key: bytes, i: int, now: float) -> str:
    header = b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    claims = {
        "Namespace": f"bench-tenant-{i}",
        "EnvironmentId": str(i + 1),
        "ProjectName": "bench",
        "EnvironmentName": f"env{i}",
        "iat": now,
    }
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def main() -> None:
    key, n, path = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
    now = time.time()
    with open(path, "w") as f:
        for i in range(n):
            f.write(token(key, i, now) + "\n")


if __name__ == "__main__":
    main()
