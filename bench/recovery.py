"""Broker recovery probe for bench/run.sh recovery.

Posts one fact every 10 ms to the ingestion API (one request at a time,
a new connection each, so a held connection does not hide anything) and
prints one JSON line per event to standard output:

  {"event": "up", "at": T}                 the first 200
  {"event": "down", "at": T}               the first answer that is not 200
                                           after a 200
  {"event": "back", "at": T, "down_at": D} the first 200 after that

T is the Unix time in seconds when the answer arrived. Runs until killed.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokens import post_status  # noqa: E402

url, token = sys.argv[1], sys.argv[2]
body = json.dumps(
    [{"name": "probe", "value": "1", "source": "recovery", "type": "TEXT"}]
).encode()


def post():
    return post_status(url, body, token, 5)


def say(**kv):
    print(json.dumps(kv), flush=True)


state, down_at = "start", None
while True:
    status = post()
    now = time.time()
    if status == 200 and state == "start":
        state = "up"
        say(event="up", at=now)
    elif status != 200 and state == "up":
        state, down_at = "down", now
        say(event="down", at=now, status=status)
    elif status == 200 and state == "down":
        state = "up"
        say(event="back", at=now, down_at=down_at)
    time.sleep(0.01)
