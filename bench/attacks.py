#!/usr/bin/env python3
"""Hostile connections against the ingestion API (issue 26), one attack per
run, while a victim tenant posts a small fact about 10 times a second on a
fresh connection from its own address (127.0.0.3) and the readiness probe
is polled every 0.5 s. Attackers connect from 127.0.0.2 and reconnect
whenever the server closes them.

Usage: attacks.py ATTACK API_PORT PROBE_PORT PID SECONDS ATTACKER_TOKEN VICTIM_TOKEN
Prints one JSON line: the victim's outcomes and p50/p99 during the attack,
probe answers, the server's CPU seconds and peak RSS during it, its RSS
before (idle) and 30 s after, the victim's 20 posts after that, and what
the attacker got.

ATTACK:
  nonreading   2 connections pipelining 8,000 GET /openapi.json each, never reading
  heads        5,000 connections each sending 127 KiB of a head, never finishing it
  descriptors  19,000 keep-alive connections, each refreshed with GET /healthz every 4 s
  amplify      64 connections posting 10,000 empty problems (29 KiB) in a loop
  large        64 connections posting 731 KiB bodies in a loop; the victim posts 790 KiB
  declared     8 connections declaring 1 MiB bodies and sending none (issue 22)
"""
import http.client, json, selectors, socket, sys, threading, time
from collections import Counter

attack, port, probe_port, pid, seconds, bad, good = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
TICKS = 100
stop = threading.Event()
got = Counter()
lock = threading.Lock()


def note(what):
    with lock:
        got[what] += 1


def cpu_s():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICKS


def status(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def conn_from(addr="127.0.0.2", timeout=30):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def post_bytes(token, path, body):
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def read_status(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    code = head.split(b" ", 2)[1].decode()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return code


# ---- attacks ---------------------------------------------------------------

def nonreading():
    batch = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n" * 8000
    def one():
        while not stop.is_set():
            try:
                s = conn_from(timeout=2)
                s.sendall(batch)
                note("sent")
                # Never read; keep the connection until the server closes it.
                while not stop.is_set():
                    try:
                        s.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    except socket.timeout:
                        pass
                    time.sleep(0.05)
            except (ConnectionError, OSError):
                note("closed by server")
    return [threading.Thread(target=one) for _ in range(2)]


def heads():
    piece = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (127 * 1024)
    def run():
        while not stop.is_set():
            socks = []
            for _ in range(5000):
                if stop.is_set():
                    break
                try:
                    s = conn_from(timeout=0.5)
                    s.setblocking(False)
                    socks.append(s)
                except OSError:
                    note("connect failed")
            for s in socks:
                try:
                    s.send(piece)
                    note("head sent")
                except OSError:
                    note("refused or closed")
            time.sleep(2)
            for s in socks:
                s.close()
    return [threading.Thread(target=run)]


def descriptors():
    def run():
        socks = []
        while not stop.is_set() and len(socks) < 19000:
            try:
                socks.append(conn_from(timeout=1))
                note("opened")
            except OSError:
                note("connect failed")
                time.sleep(0.01)
        sel_req = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
        while not stop.is_set():
            for i, s in enumerate(socks):
                if s is None:
                    continue
                try:
                    s.send(sel_req)
                    s.setblocking(False)
                    try:
                        if not s.recv(4096):
                            raise ConnectionError
                    except BlockingIOError:
                        pass
                    s.setblocking(True)
                except OSError:
                    note("closed by server")
                    s.close()
                    try:
                        socks[i] = conn_from(timeout=1)
                    except OSError:
                        socks[i] = None
            stop.wait(4)
        for s in socks:
            if s:
                s.close()
    return [threading.Thread(target=run)]


def posting(body, path, clients):
    data = post_bytes(bad, path, body)
    def one():
        s = None
        while not stop.is_set():
            try:
                if s is None:
                    s = conn_from()
                s.sendall(data)
                note(read_status(s))
            except (ConnectionError, OSError):
                note("error")
                s = None
    return [threading.Thread(target=one) for _ in range(clients)]


def amplify():
    return posting(("[" + ",".join(["{}"] * 10000) + "]").encode(), "/problems", 64)


def large():
    fact = '{"name":"n","value":"' + "x" * 60 + '"}'
    body = ("[" + ",".join([fact] * 9000) + "]").encode()
    assert 700 * 1024 < len(body) < 760 * 1024, len(body)
    return posting(body, "/facts", 64)


def declared():
    head = (f"POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: {bad}\r\ncontent-type: application/json\r\n"
            f"content-length: {1 << 20}\r\n\r\n").encode()
    def one():
        while not stop.is_set():
            try:
                s = conn_from(timeout=30)
                s.sendall(head)
                note("declared")
                s.recv(4096)  # until the server answers or closes
            except (ConnectionError, OSError):
                pass
    return [threading.Thread(target=one) for _ in range(8)]


# ---- victim and probe ------------------------------------------------------

victim, lat, probes = Counter(), [], Counter()
victim_body = b'[{"name":"ok","value":"v"}]'
if attack == "large":
    fact = '{"name":"n","value":"' + "y" * 70 + '"}'
    victim_body = ("[" + ",".join([fact] * 8600) + "]").encode()


def victim_loop():
    req = post_bytes(good, "/facts", victim_body)
    while not stop.is_set():
        t = time.time()
        try:
            s = conn_from("127.0.0.3", timeout=30)
            s.sendall(req)
            code = read_status(s)
            s.close()
        except (ConnectionError, OSError) as e:
            code = type(e).__name__
        with lock:
            victim[code] += 1
            lat.append((time.time() - t) * 1000)
        time.sleep(max(0, 0.1 - (time.time() - t)))


def probe_loop():
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", probe_port, timeout=2)
            c.request("GET", "/readyz")
            probes[str(c.getresponse().status)] += 1
            c.close()
        except Exception as e:
            probes[type(e).__name__] += 1
        time.sleep(0.5)


# Warm up every route once (the OpenAPI document, for one, is built on its
# first request and kept), so "idle" is the process serving, not just started.
for method, path, body in [("GET", "/openapi.json", None), ("POST", "/facts", victim_body), ("POST", "/problems", b"[]")]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers={"Authorization": good, "Content-Type": "application/json"})
    c.getresponse().read()
    c.close()
time.sleep(3)
idle = status("VmRSS")
threads = globals()[attack]() + [threading.Thread(target=victim_loop), threading.Thread(target=probe_loop)]
cpu0 = cpu_s()
for t in threads:
    t.daemon = True
    t.start()
time.sleep(seconds)
cpu = cpu_s() - cpu0
stop.set()
for t in threads:
    t.join(timeout=10)
peak = status("VmHWM")
time.sleep(30)
after = status("VmRSS")
# The victim once more, after: 20 posts.
after_codes = Counter()
req = post_bytes(good, "/facts", victim_body)
for _ in range(20):
    try:
        s = conn_from("127.0.0.3", timeout=30)
        s.sendall(req)
        after_codes[read_status(s)] += 1
        s.close()
    except (ConnectionError, OSError) as e:
        after_codes[type(e).__name__] += 1
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p))], 1) if lat else None
total = sum(victim.values())
print(json.dumps({
    "victim": dict(victim), "victim_ok_pct": round(100 * victim.get("200", 0) / total, 1) if total else None,
    "victim_p50_ms": q(0.5), "victim_p99_ms": q(0.99), "probes": dict(probes),
    "cpu_pct": round(100 * cpu / seconds, 1), "peak_mib": round(peak, 1),
    "idle_mib": round(idle, 1), "after_30s_mib": round(after, 1), "victim_after": dict(after_codes),
    "attacker": dict(got),
}))
