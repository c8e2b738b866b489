#!/usr/bin/env bash
# A flame graph of the ingestion path under the bench's load: the operator
# (a release build with symbols, built here into its own target directory),
# POST /facts from wrk with 64 connections, `perf record` with DWARF call
# graphs for 10 s, folded and drawn by inferno (`cargo install inferno`).
# Writes bench/results/ingest-flamegraph.svg and prints the busiest frames.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh >/dev/null
command -v perf >/dev/null || { echo "perf is needed (Debian: linux-perf)"; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
target=${PROFILE_TARGET:-$HOME/.cache/insights-remote/profile-target}
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --quiet -p insights-remote --target-dir "$target"
bin=$target/release/insights-remote
key=bench-signing-key-0123456789abcdef0123
work=$(mktemp -d)
INSIGHTS_TOKEN_SECRET=$key RUST_LOG=info "$bin" --enable-configmap-reconciler=false \
  --enable-namespace-reconciler=false --rabbitmq-hostname 127.0.0.1:5672 \
  --rabbitmq-exchange bench-prof-x --rabbitmq-queue bench-prof-q \
  --health-probe-bind-address 127.0.0.1:18081 --metrics-bind-address 0 \
  --webservice-port 18888 >"$work/operator.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rabbitmqctl delete_queue bench-prof-q >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 200); do
  curl -fsS http://127.0.0.1:18081/readyz 2>/dev/null | grep -q '"broker":"connected"' && break
  sleep 0.05
done
token=$(INSIGHTS_TOKEN_SECRET=$key "$bin" generate-token --namespace bench-main --environment-id 42 \
  --project-name bench --environment-name main)
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '[{"name":"drupal-version","value":"10.3.6","source":"bench","type":"SEMVER","category":"Framework","service":"cli"},{"name":"php-version","value":"8.3.13","source":"bench","type":"SEMVER","service":"cli"},{"name":"site-url","value":"https://example.com","source":"bench","type":"URL"}]'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "$token"
LUA
wrk -t2 -c64 -d15s --latency -s "$work/post.lua" http://127.0.0.1:18888/facts >"$work/wrk.txt" &
wrk_pid=$!
sleep 3
perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep 10 2>/dev/null
wait "$wrk_pid"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded.txt"
mkdir -p bench/results
inferno-flamegraph --title "insights-remote POST /facts, 64 connections" <"$work/folded.txt" \
  >bench/results/ingest-flamegraph.svg
grep -E 'Requests/sec' "$work/wrk.txt"
echo "flame graph: bench/results/ingest-flamegraph.svg"
# Share of samples by the frame nearest the leaf that belongs to a crate.
python3 - "$work/folded.txt" <<'PY'
import sys, collections, re
total = 0
by = collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    frames = stack.split(";")
    crate = "other"
    for f in reversed(frames):
        m = re.match(r"(?:<)?([a-z_][a-z0-9_]*)::", f)
        if m:
            crate = m.group(1)
            break
        if f.startswith(("[", "__", "_int_", "malloc", "free", "cfree", "realloc")):
            crate = "libc/kernel"
            break
    by[crate] += n
for crate, n in by.most_common(12):
    print(f"{n / total * 100:5.1f}%  {crate}")
PY
