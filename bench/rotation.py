#!/usr/bin/env python3
"""During a signing-key rotation, posts facts with a token signed with the
old key and one signed with the new key, for one environment, every 20 ms
each, until STOP_FILE exists; then prints one JSON line: how many of each
were accepted and refused, and for the new token, refusals after its first
acceptance (once the operator has the new key, it must keep it).

usage: rotation.py OLD_KEY NEW_KEY NAMESPACE ENV_ID PROJECT ENVIRONMENT URL STOP_FILE
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from tokens import b64, post_status  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402


def sign(key: bytes, claims: dict) -> str:
    header = b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def post(url: str, token: str) -> int:
    body = json.dumps([{"name": "rotation", "value": "1", "source": "bench", "type": "TEXT", "service": "cli"}]).encode()
    return post_status(url, body, f"Bearer {token}", 10)


def main():
    old, new, ns, env_id, project, env, url, stop = sys.argv[1:9]
    claims = {"Namespace": ns, "EnvironmentId": env_id, "ProjectName": project,
              "EnvironmentName": env, "iat": time.time()}
    tokens = {"old": sign(old.encode(), claims), "new": sign(new.encode(), claims)}
    seen = {k: {"ok": 0, "refused": 0} for k in tokens}
    new_accepted = False
    new_refused_after = 0
    while not os.path.exists(stop):
        for name, t in tokens.items():
            code = post(url, t)
            ok = code == 200
            seen[name]["ok" if ok else "refused"] += 1
            if name == "new":
                if ok:
                    new_accepted = True
                elif new_accepted:
                    new_refused_after += 1
        time.sleep(0.02)
    print(json.dumps({"old_ok": seen["old"]["ok"], "old_refused": seen["old"]["refused"],
                      "new_ok": seen["new"]["ok"], "new_refused": seen["new"]["refused"],
                      "new_refused_after_first_ok": new_refused_after}))


if __name__ == "__main__":
    main()
