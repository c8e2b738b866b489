#!/usr/bin/env python3
"""Hostile load on the ingestion API: N clients post maximum-size bodies in a
loop while one well-behaved tenant posts small facts. Prints one JSON line:
status counts for both, and the tenant's p50/p99 latency in ms.
Usage: hostile.py PORT HOSTILE_TOKEN TENANT_TOKEN CLIENTS SECONDS KIND
KIND: many (80,000 minimal facts, 1 MiB) or full (10,000 facts filling 1 MiB).
HOST (environment; default 127.0.0.1): where the API listens, e.g. a pod's
address on the node (tests/node_ha.rs)."""
import http.client, json, os, sys, threading, time
from collections import Counter

port, bad, good, clients, seconds, kind = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
if kind == "many":
    body = ("[" + ",".join(['{"name":"a"}'] * 80000) + "]").encode()
else:
    fact = '{"name":"n","value":"' + "x" * 80 + '"}'
    body = ("[" + ",".join([fact] * 10000) + "]").encode()
assert len(body) <= 1 << 20, len(body)
HOST = os.environ.get("HOST", "127.0.0.1")
deadline = time.time() + seconds
hostile, tenant, lat = Counter(), Counter(), []
lock = threading.Lock()

def post(conn, token, data):
    conn.request("POST", "/facts", body=data, headers={"Authorization": token, "Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status

def attacker():
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    while time.time() < deadline:
        try:
            s = post(conn, bad, body)
        except Exception:
            s = "error"
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
        with lock:
            hostile[s] += 1

def well_behaved():
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    i = 0
    while time.time() < deadline:
        t = time.time()
        try:
            s = post(conn, good, json.dumps([{"name": f"ok-{i}", "value": "v"}]).encode())
        except Exception:
            s = "error"
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
        with lock:
            tenant[s] += 1
            lat.append((time.time() - t) * 1000)
        i += 1
        time.sleep(0.02)

threads = [threading.Thread(target=attacker) for _ in range(clients)] + [threading.Thread(target=well_behaved)]
for t in threads: t.start()
for t in threads: t.join()
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p))], 1) if lat else None
print(json.dumps({"hostile": {str(k): v for k, v in hostile.items()}, "tenant": {str(k): v for k, v in tenant.items()}, "tenant_p50_ms": q(0.5), "tenant_p99_ms": q(0.99)}))
