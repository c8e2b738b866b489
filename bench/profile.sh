#!/usr/bin/env bash
# A flame graph of the ingestion path under the bench's load: `run.sh
# ingest` with a release build that keeps its symbols (built here into its
# own target directory), `perf record` with DWARF call graphs for 10 s of
# the wrk phase, folded and drawn by inferno (`cargo install inferno`).
# Writes bench/results/ingest-flamegraph.svg and prints the busiest frames.
#
# `bash bench/profile.sh heap [N]`: where the memory of the environments
# case goes instead. N (10,000) Lagoon namespaces with no token on a wiped
# control plane, the same build run under heaptrack (Debian) until every
# token is minted; prints the heap's peak by the part of the program that
# holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh >/dev/null
target=${PROFILE_TARGET:-$HOME/.cache/insights-remote/profile-target}
if [ "${1:-}" = heap ]; then
  n=${2:-10000}
  command -v heaptrack >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack >/dev/null; }
  CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --quiet -p insights-remote --target-dir "$target"
  cargo build --release --quiet -p insights-remote-bench
  bin=$target/release/insights-remote
  work=$(mktemp -d)
  bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
  KUBECONFIG=$(bash hack/control-plane.sh kubeconfig); export KUBECONFIG
  target/release/irbench tokens --count "$n" --concurrency 16 --prefix heap --mode precreate >/dev/null
  INSIGHTS_TOKEN_SECRET=bench-signing-key-0123456789abcdef0123 heaptrack -o "$work/heap" "$bin" \
    --health-probe-bind-address 127.0.0.1:18081 --metrics-bind-address 127.0.0.1:18080 --metrics-secure=false \
    --config-name bench-absent --pod-namespace default --enable-configmap-reconciler=false --enable-webservice=false \
    --rabbitmq-enabled=false --token-target-label insights-remote.bench/environment >"$work/operator.log" 2>&1 &
  target/release/irbench tokens --count "$n" --prefix heap --mode wait
  pid=$(pgrep -f "^$bin " | head -1)
  grep -E 'VmHWM' "/proc/$pid/status"
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  sleep 2
  heaptrack_print "$work"/heap.*zst --flamegraph-cost-type peak -F "$work/peak.folded" >/dev/null 2>&1
  bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
  python3 - "$work/peak.folded" <<'PY'
import collections, re, sys
total, parts = 0, collections.Counter()
# The innermost frame of ours or of a crate that says who holds the bytes.
holders = [
    ("kube reflector stores (apply_watcher_event)", r"apply_watcher_event"),
    ("kube controller: scheduler and runner", r"kube_runtime::(scheduler|controller::runner)|scheduler.rs|runner.rs"),
    ("token reconciler", r"controller::namespace|namespace.rs"),
    ("tenants", r"tenants"),
    ("HTTP client (kube_client, hyper, rustls)", r"kube_client|hyper|rustls"),
]
for line in open(sys.argv[1]):
    stack, n = line.rstrip().rsplit(" ", 1)
    n = int(n)
    total += n
    for name, pat in holders:
        if re.search(pat, stack):
            parts[name] += n
            break
    else:
        parts["other"] += n
print(f"heap peak {total / 2**20:.1f} MiB")
for name, n in parts.most_common():
    print(f"{n / 2**20:7.1f} MiB  {name}")
PY
  exit 0
fi
command -v perf >/dev/null || { echo "perf is needed (Debian: linux-perf)"; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --quiet -p insights-remote --target-dir "$target"
bin=$target/release/insights-remote
work=$(mktemp -d)
# The bench's own ingestion case, run with this build; perf attaches to the
# operator while wrk loads it.
BENCH_BIN=$bin bash bench/run.sh ingest >"$work/bench.txt" 2>&1 &
bench=$!
pid=""
for _ in $(seq 1 6000); do
  pid=$(pgrep -f "^$bin " | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { cat "$work/bench.txt"; exit 1; }
sleep 5
perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep 10 2>/dev/null
wait "$bench"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded.txt"
mkdir -p bench/results
inferno-flamegraph --title "insights-remote POST /facts, 64 connections" <"$work/folded.txt" \
  >bench/results/ingest-flamegraph.svg
grep -E 'insights-remote POST|ratio' "$work/bench.txt" || true
echo "flame graph: bench/results/ingest-flamegraph.svg"
# Where the samples are: by thread, and the scheduler and allocator shares.
python3 - "$work/folded.txt" <<'PY'
import sys, collections
total = 0
threads = collections.Counter()
leaf = collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    frames = stack.split(";")
    threads[frames[0]] += n
    f = frames[-1]
    if f.startswith(("finish_task_switch", "_raw_spin_unlock")):
        leaf["thread switches (scheduler)"] += n
    elif any(k in f for k in ("malloc", "_int_free", "libc_free", "cfree", "malloc_consolidate", "unlink_chunk", "tcache")):
        leaf["malloc and free"] += n
    elif "memcpy" in f or "memmove" in f:
        leaf["memcpy"] += n
for name, n in threads.most_common(5):
    print(f"{n / total * 100:5.1f}%  thread {name}")
for name, n in leaf.most_common():
    print(f"{n / total * 100:5.1f}%  {name}")
PY
