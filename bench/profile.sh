#!/usr/bin/env bash
# A flame graph of the ingestion path under the bench's load: `run.sh
# ingest` with a release build that keeps its symbols (built here into its
# own target directory), `perf record` with DWARF call graphs for 10 s of
# the wrk phase, folded and drawn by inferno (`cargo install inferno`).
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
