#!/usr/bin/env bash
# Benchmarks of insights-remote against the ceilings of the real components,
# on this machine, in one run each:
#   bash bench/run.sh ingest | hostile | attacks | configmaps | postprocessors | memory |
#                     tokens | tenants | environments | backlog | backlog-dt | rotation | replicas |
#                     footprint | recovery | dtmemory | nodeha | all
# (all leaves out the issue-25 scale cases, dtmemory and backlog-dt: they take
# minutes, and the last two wipe or load the shared Dependency-Track).
# Results are printed as Markdown and appended to bench/results/<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash hack/deps.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# BENCH_SKIP_BUILD=1 runs the binaries already built (alternating before
# and after binaries with BENCH_BIN without a rebuild in between).
[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release --quiet -p insights-remote -p insights-remote-bench
KUBECONFIG=$(bash hack/control-plane.sh kubeconfig)
export KUBECONFIG
BIN=${BENCH_BIN:-$root/target/release/insights-remote}
IRB=$root/target/release/irbench
KEY=bench-signing-key-0123456789abcdef0123
work=$(mktemp -d)
mkdir -p bench/results
out=bench/results/$(date -u +%Y-%m-%d).md
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # The replicas case's loopback balancing, if it stopped half way.
  if command -v iptables >/dev/null && iptables -t nat -L IRBENCH >/dev/null 2>&1; then
    iptables -t nat -D OUTPUT -p tcp -d 127.0.0.1 --dport 18890 -j IRBENCH 2>/dev/null || true
    iptables -t nat -F IRBENCH && iptables -t nat -X IRBENCH
  fi
}
trap cleanup EXIT

say() { printf '%s\n' "$*" | tee -a "$out"; }
k() { bash hack/control-plane.sh kubectl "$@"; }
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{print ($14+$15)/t}' "/proc/$1/stat"; }
# Busy and total jiffies of the whole machine (all cores), for its load.
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
busy_pct() { python3 -c "a='$1'.split(); b='$2'.split(); print(round((float(b[0])-float(a[0]))/(float(b[1])-float(a[1]))*100))"; }
hwm_mib() { awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
# Ready once serving with the broker connected (or publishing disabled, as in the tokens case).
wait_ready() { for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$1/readyz" 2>/dev/null | grep -qE '"broker":"(connected|disabled)"' && return 0; sleep 0.05; done; return 1; }
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print(d['$1'])"; }

# Starts the operator; extra flags follow. Sets $op_pid. BENCH_PROBE_PORT and
# BENCH_METRICS_PORT move its probe and metrics ports (18081, 18080) when
# another process holds them (the attacks case needs 18081).
start_operator() {
  INSIGHTS_TOKEN_SECRET=$KEY RUST_LOG=${BENCH_LOG:-info} WEBSERVICE_WORKERS=${BENCH_WORKERS:-} "$BIN" \
    --rabbitmq-hostname 127.0.0.1:5672 --rabbitmq-reconnect-retry-interval "${BENCH_RETRY:-1}" \
    --health-probe-bind-address "127.0.0.1:${BENCH_PROBE_PORT:-18081}" --metrics-bind-address "127.0.0.1:${BENCH_METRICS_PORT:-18080}" --metrics-secure=false \
    --webservice-port "${BENCH_WEB_PORT:-18888}" --config-name "${BENCH_CONFIG:-bench-absent}" --pod-namespace default "$@" \
    >"$work/operator${BENCH_WEB_PORT:-}.log" 2>&1 &
  op_pid=$!
  pids+=("$op_pid")
  wait_ready "${BENCH_PROBE_PORT:-18081}" || { tail -20 "$work/operator.log"; exit 1; }
}
stop_operator() { kill -TERM "$op_pid" 2>/dev/null; wait "$op_pid" 2>/dev/null || true; }

header() {
  say ""
  say "### $1 ($(date -u +%H:%M) UTC, $(nproc) cores, $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo " with uncommitted changes to the product")${BENCH_BIN:+, binary $BENCH_BIN}${CONFIGMAP_RECONCILER_MAX_CONCURRENT:+, CONFIGMAP_RECONCILER_MAX_CONCURRENT=$CONFIGMAP_RECONCILER_MAX_CONCURRENT})"
  say ""
}

bench_ingest() {
  header "Ingestion: POST /facts end to end vs raw confirmed publishes"
  local c=${BENCH_CONNECTIONS:-64} d=${BENCH_SECONDS:-15}
  start_operator --enable-configmap-reconciler=false --enable-namespace-reconciler=false \
    --rabbitmq-exchange bench-ingest-x --rabbitmq-queue bench-ingest-q
  local token
  token=$(INSIGHTS_TOKEN_SECRET=$KEY "$BIN" generate-token --namespace bench-main --environment-id 42 --project-name bench --environment-name main)
  local body='[{"name":"drupal-version","value":"10.3.6","source":"bench","type":"SEMVER","category":"Framework","service":"cli"},{"name":"php-version","value":"8.3.13","source":"bench","type":"SEMVER","service":"cli"},{"name":"site-url","value":"https://example.com","source":"bench","type":"URL"}]'
  cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "$token"
LUA
  local cpu0; cpu0=$(cpu_s "$op_pid")
  local m0; m0=$(machine)
  wrk -t2 -c"$c" -d"${d}s" --latency -s "$work/post.lua" http://127.0.0.1:18888/facts >"$work/wrk.txt"
  local cpu1; cpu1=$(cpu_s "$op_pid")
  local mbusy; mbusy=$(busy_pct "$m0" "$(machine)")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%"{print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%"{print $2}' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/{print $5}' "$work/wrk.txt"); non2xx=${non2xx:-0}
  local hwm; hwm=$(hwm_mib "$op_pid")
  local cpu; cpu=$(python3 -c "print(round(($cpu1-$cpu0)/$d*100))")
  stop_operator
  rabbitmqctl delete_queue bench-ingest-q >/dev/null 2>&1 || true
  # The ceiling: the same messages, the same number in flight, raw lapin.
  printf '%s' "{\"type\":\"direct.facts\",\"environment\":42,\"projectName\":\"bench\",\"environmentName\":\"main\",\"facts\":$body}" >"$work/msg.json"
  m0=$(machine)
  local ceil; ceil=$("$IRB" amqp-ceiling --exchange bench-ceil-x --queue bench-ceil-q --inflight "$c" --seconds "$d" --body-file "$work/msg.json")
  local crps cp50 cp99
  local cbusy; cbusy=$(busy_pct "$m0" "$(machine)")
  crps=$(echo "$ceil" | json rps); cp50=$(echo "$ceil" | json p50_ms); cp99=$(echo "$ceil" | json p99_ms)
  say "| | requests/s | p50 | p99 | server CPU | peak RSS | machine busy |"
  say "|---|---|---|---|---|---|---|"
  say "| insights-remote POST /facts ($c connections, ${d}s, wrk; $non2xx non-2xx) | $rps | $p50 | $p99 | ${cpu}% of one core, $(python3 -c "print(round(($cpu1-$cpu0)/($rps*$d)*1e6))") µs per request | ${hwm} MiB | ${mbusy}% |"
  say "| ceiling: raw lapin confirmed publishes ($c in flight) | $(printf %.0f "$crps") | $(printf %.2f "$cp50")ms | $(printf %.2f "$cp99")ms | | | ${cbusy}% |"
  say "| ratio | $(python3 -c "print(f'{$rps/$crps*100:.0f}%')") | | | | | |"
}

# API requests the API server answered for the resources the token
# reconciler touches (namespaces, Secrets, Events), all clients together.
api_requests() {
  k get --raw /metrics | awk '/^apiserver_request_total\{/ && /resource="(namespaces|secrets|events)"/ {s+=$NF} END {printf "%d", s}'
}


# The Go original (BENCH_GO=<binary>, from ../shared/upstream-go/build.sh)
# with upstream's variables given as arguments (NAME=value ...), its API on
# 18888 and probes on 18081; ready at its /readyz.
start_go() {
  env INSIGHTS_TOKEN_SECRET="$KEY" "$@" "$BENCH_GO" --rabbitmq-hostname 127.0.0.1:5672 --webservice-port 18888 \
    --health-probe-bind-address 127.0.0.1:18081 --metrics-bind-address 0 >"$work/operator.log" 2>&1 &
  op_pid=$!
  pids+=("$op_pid")
  for _ in $(seq 1 600); do curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && return 0; sleep 0.05; done
  tail -20 "$work/operator.log"; exit 1
}

# Environments (issue 25, point 1): N Lagoon namespaces exist, none has a
# token; the operator starts (tokens only) and mints them all. Then it idles
# for BENCH_STEADY seconds. API requests are the API server's count for
# namespaces, Secrets and Events over the phase, less the bench's own
# polls and the background rate measured before the operator started. The
# operator targets only the bench's namespaces (TOKEN_TARGET_LABEL), so it
# leaves a running demo's namespace (signed with another key) alone.
bench_environments() {
  header "Environments: start-up with N Lagoon namespaces and no token, then idle${BENCH_GO:+ (the Go original)}"
  local steady=${BENCH_STEADY:-60}
  say "| namespaces | all tokens (s) | ceiling: create as many Secrets (s) | times the ceiling | API requests per namespace | CPU to mint all (s) | peak RSS | idle: CPU | idle: RSS | idle: API requests/min |"
  say "|---|---|---|---|---|---|---|---|---|---|"
  for n in ${BENCH_ENVS:-100 1000 10000}; do
    local prefix="benv$n-$(date +%s)"
    "$IRB" tokens --count "$n" --concurrency 16 --prefix "$prefix" --mode precreate >/dev/null
    # The ceiling in the same run: a plain client's create of as many
    # Secrets (named so the operator ignores them), 16 at once as the
    # operator's token reconciler runs.
    local ceil; ceil=$("$IRB" tokens --count "$n" --concurrency 16 --prefix "$prefix" --mode ceiling-secrets | json done_s)
    local b0 b1; b0=$(api_requests); sleep 10; b1=$(api_requests)
    local background; background=$(python3 -c "print(($b1-$b0-1)/10)")
    local r0; r0=$(api_requests)
    local t0; t0=$(date +%s.%N)
    if [ -n "${BENCH_GO:-}" ]; then
      start_go ENABLE_CONFIGMAP_RECONCILER=false ENABLE_NAMESPACE_RECONCILER=true ENABLE_WEBSERVICE=false \
        RABBITMQ_ENABLED=false TOKEN_TARGET_LABEL=insights-remote.bench/environment
    else
      start_operator --enable-configmap-reconciler=false --enable-webservice=false --rabbitmq-enabled=false \
        --token-target-label insights-remote.bench/environment
    fi
    local r; r=$("$IRB" tokens --count "$n" --prefix "$prefix" --mode wait)
    local t1; t1=$(date +%s.%N)
    local r1; r1=$(api_requests)
    local cpu; cpu=$(cpu_s "$op_pid")
    local hwm; hwm=$(hwm_mib "$op_pid")
    local per_ns
    per_ns=$(python3 -c "print(round(max(0, $r1-$r0-$(echo "$r" | json polls)-1-$background*($t1-$t0))/$n, 2))")
    local s0 c0; s0=$(api_requests); c0=$(cpu_s "$op_pid")
    sleep "$steady"
    local s1 c1; s1=$(api_requests); c1=$(cpu_s "$op_pid")
    local idle_rss; idle_rss=$(rss_mib "$op_pid")
    stop_operator
    printf '{"case":"environments","series":"%s","n":%s,"seconds":%s,"ceiling_s":%s,"requests_per_namespace":%s,"cpu_s":%s,"peak_rss_mib":%s,"idle_rss_mib":%s}\n' \
      "${BENCH_SERIES:-insights-remote (Rust)}" "$n" "$(python3 -c "print(round($t1-$t0, 2))")" "$ceil" "$per_ns" "$cpu" "$hwm" "$idle_rss" >>bench/results/curves.jsonl
    say "| $n | $(python3 -c "print(f'{$t1-$t0:.1f}')") | $(printf %.1f "$ceil") | $(python3 -c "print(f'{($t1-$t0)/$ceil:.2f}')") | $per_ns | $(printf %.2f "$cpu") | ${hwm} MiB | $(python3 -c "print(f'{($c1-$c0)/$steady*100:.2f}% of a core')") | ${idle_rss} MiB | $(python3 -c "print(round(max(0, $s1-$s0-1-$background*$steady)/$steady*60, 1))") |"
    # Deleting 10,000 namespaces takes the namespace controller about 20
    # minutes here: the next size starts from an empty cluster instead (as
    # the tokens case does; a running demo and node go with it).
    bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
  done
  python3 bench/plot.py environments "Lagoon namespaces" "start-up" seconds requests_per_namespace peak_rss_mib
}

# Backlog (issue 25, point 2): COUNT insights ConfigMaps (half 100 KiB SBOMs,
# half 2 KiB image inspects) wait in NAMESPACES Lagoon namespaces when the
# operator starts, as after an outage. Timed from the operator's start until
# every one carries the processed annotation; every message is read from
# the queue and counted by ConfigMap (a second copy shows as "twice"). The
# ceiling, in the same run: a plain client's create + patch of as many
# ConfigMaps in the same namespaces. The control plane is wiped between
# sizes (a running demo goes with it). Ours publishes to its own exchange
# and queue; the Go original has no flag for them and publishes to
# `lagoon-insights`, read here from `lagoon-insights:items` (stop the demo
# first: its consumer reads that queue).
bench_backlog() {
  # BENCH_DT=1: with Dependency-Track on, against the real one started fresh
  # (../shared/dependency-track/run.sh, its database wiped before the
  # operator, before the ceiling and after), the ceiling being a plain
  # client's uploads of as many such SBOMs (bench/dtceiling.py).
  local url="" dtkey="" dt_slots=${DEPENDENCY_TRACK_MAX_CONCURRENT:-2}
  header "Backlog: insights ConfigMaps waiting when the operator starts${BENCH_DT:+, Dependency-Track on ($dt_slots uploads at once)}${BENCH_GO:+ (the Go original)}"
  # A Dependency-Track with an empty database (its address and a new key).
  dt_fresh() {
    local dt; dt=$(DT_FRESH=1 bash "$root/../shared/dependency-track/run.sh" 2>/dev/null | grep '^DT_')
    url=$(echo "$dt" | sed -n 's/^DT_BASE_URL=//p' | tail -1); dtkey=$(echo "$dt" | sed -n 's/^DT_API_KEY=//p' | tail -1)
  }
  if [ -n "${BENCH_DT:-}" ]; then
    dt_fresh
    say "| ConfigMaps (SBOMs) | namespaces | all processed (s) | Dependency-Track uploads: success / failure | uploads/s | ceiling: a plain client's uploads/s | share of the ceiling | messages / distinct / twice | peak RSS | CPU (s) |"
    say "|---|---|---|---|---|---|---|---|---|---|"
  else
    say "| ConfigMaps | namespaces | all processed (s) | ceiling: create + patch (s) | share of the ceiling | messages / distinct / twice | peak RSS | CPU (s) |"
    say "|---|---|---|---|---|---|---|---|"
  fi
  local size
  for size in ${BENCH_BACKLOG:-1000:100 1000:1000 5000:100 5000:1000}; do
    local n=${size%%:*} m=${size##*:}
    local prefix="bbl$n-$m-$(date +%s)"
    "$IRB" backlog --prefix "$prefix" --namespaces "$m" --count "$n" --concurrency 16 --mode precreate >/dev/null
    local x=bench-backlog-x q=bench-backlog-q
    [ -z "${BENCH_GO:-}" ] || { x=lagoon-insights; q=lagoon-insights:items; }
    rabbitmqctl purge_queue "$q" >/dev/null 2>&1 || true
    "$IRB" backlog --prefix "$prefix" --namespaces "$m" --count "$n" --mode drain --exchange "$x" --queue "$q" \
      >"$work/drain.json" 2>"$work/drain.err" &
    local drain=$!
    for _ in $(seq 1 200); do grep -q listening "$work/drain.err" && break; sleep 0.05; done
    local t0; t0=$(date +%s.%N)
    if [ -n "${BENCH_GO:-}" ]; then
      start_go ENABLE_CONFIGMAP_RECONCILER=true ENABLE_NAMESPACE_RECONCILER=false ENABLE_WEBSERVICE=false \
        ${BENCH_DT:+ENABLE_DEPENDENCY_TRACK_INTEGRATION=true DEPENDENCY_TRACK_API_ENDPOINT=$url DEPENDENCY_TRACK_API_KEY=$dtkey}
    elif [ -n "${BENCH_DT:-}" ]; then
      DEPENDENCY_TRACK_API_KEY=$dtkey DEPENDENCY_TRACK_MAX_CONCURRENT=$dt_slots \
        start_operator --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
        --rabbitmq-exchange "$x" --rabbitmq-queue "$q" \
        --enable-dependency-track-integration=true --dependency-track-api-endpoint "$url"
    else
      start_operator --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
        --rabbitmq-exchange "$x" --rabbitmq-queue "$q"
    fi
    wait "$drain" || { cat "$work/drain.err"; tail -20 "$work/operator.log"; exit 1; }
    local t1; t1=$(date +%s.%N)
    local cpu; cpu=$(cpu_s "$op_pid")
    local hwm; hwm=$(hwm_mib "$op_pid")
    stop_operator
    local d; d=$(cat "$work/drain.json")
    local secs; secs=$(python3 -c "print(round($t1-$t0, 2))")
    local series="${BENCH_SERIES:-insights-remote (Rust)}, $m namespaces"
    if [ -n "${BENCH_DT:-}" ]; then
      # What each SBOM's central Dependency-Track step recorded.
      local ok failed sboms=$(((n + 1) / 2))
      k get configmaps -A -l bench-id,lagoon.sh/insightsType=sbom-gz \
        -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.annotations.dependencytrack\.insights\.lagoon\.sh/default-status}{"\n"}{end}' >"$work/dtstatus.txt"
      ok=$(grep -c "^$prefix-[0-9]* success$" "$work/dtstatus.txt" || true)
      failed=$(grep -c "^$prefix-[0-9]* failure$" "$work/dtstatus.txt" || true)
      # The ceiling on an empty database too, as the operator had.
      dt_fresh
      local c; c=$(python3 bench/dtceiling.py "$url" "$dtkey" "$prefix-ceiling" "$sboms" "$dt_slots")
      local rate crate share
      rate=$(python3 -c "print(round($ok/($t1-$t0), 2))")
      crate=$(echo "$c" | python3 -c "import json,sys; c=json.loads(sys.stdin.readline()); print(round(c['uploads']/c['done_s'], 2))")
      share=$(python3 -c "print(round($rate/$crate*100))")
      printf '{"case":"backlog-dt","series":"%s","n":%s,"namespaces":%s,"seconds":%s,"uploads_per_s":%s,"share_of_ceiling_pct":%s,"twice":%s,"peak_rss_mib":%s}\n' \
        "$series" "$n" "$m" "$secs" "$rate" "$share" "$(echo "$d" | json twice)" "$hwm" >>bench/results/curves.jsonl
      say "| $n ($sboms) | $m | $secs | $ok / $failed | $rate | $crate | ${share}% | $(echo "$d" | json deliveries) / $(echo "$d" | json distinct) / $(echo "$d" | json twice) | ${hwm} MiB | $(printf %.1f "$cpu") |"
    else
      local c; c=$("$IRB" backlog --prefix "$prefix" --namespaces "$m" --count "$n" --concurrency 8 --mode ceiling)
      local share; share=$(python3 -c "print(round($(echo "$c" | json done_s)/($t1-$t0)*100))")
      printf '{"case":"backlog","series":"%s","n":%s,"namespaces":%s,"seconds":%s,"share_of_ceiling_pct":%s,"twice":%s,"peak_rss_mib":%s}\n' \
        "$series" "$n" "$m" "$secs" "$share" "$(echo "$d" | json twice)" "$hwm" >>bench/results/curves.jsonl
      say "| $n | $m | $secs | $(echo "$c" | json done_s | xargs printf %.1f) | ${share}% | $(echo "$d" | json deliveries) / $(echo "$d" | json distinct) / $(echo "$d" | json twice) | ${hwm} MiB | $(printf %.1f "$cpu") |"
    fi
    rabbitmqctl purge_queue "$q" >/dev/null 2>&1 || true
    bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
    # A clean Dependency-Track for the next size (and for whatever runs after).
    [ -z "${BENCH_DT:-}" ] || dt_fresh
  done
  if [ -n "${BENCH_DT:-}" ]; then
    python3 bench/plot.py backlog-dt "ConfigMaps waiting (half SBOMs)" "drain with Dependency-Track" seconds uploads_per_s peak_rss_mib
  else
    python3 bench/plot.py backlog "ConfigMaps waiting" "drain" seconds share_of_ceiling_pct peak_rss_mib
  fi
}

# Replicas (issue 25, point 4): the ingestion API as 1 and as 2 processes
# behind one address, spread per connection the way kube-proxy spreads a
# Service's connections over its pods: iptables DNAT (nth connection) on
# loopback, in a chain of its own removed afterwards. The ceiling: the
# broker's raw confirmed publishes with as many in flight.
bench_replicas() {
  header "Replicas: POST /facts to 1 and 2 processes behind one address"
  local c=${BENCH_CONNECTIONS:-64} d=${BENCH_SECONDS:-15}
  command -v iptables >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; }
  local token
  token=$(INSIGHTS_TOKEN_SECRET=$KEY "$BIN" generate-token --namespace bench-main --environment-id 42 --project-name bench --environment-name main)
  local body='[{"name":"drupal-version","value":"10.3.6","source":"bench","type":"SEMVER","category":"Framework","service":"cli"},{"name":"php-version","value":"8.3.13","source":"bench","type":"SEMVER","service":"cli"},{"name":"site-url","value":"https://example.com","source":"bench","type":"URL"}]'
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "%s"\n' "'$body'" "$token" >"$work/post.lua"
  local flags=(--enable-configmap-reconciler=false --enable-namespace-reconciler=false --rabbitmq-exchange bench-rep-x --rabbitmq-queue bench-rep-q)
  BENCH_WEB_PORT=18888 start_operator "${flags[@]}"; local a=$op_pid
  BENCH_WEB_PORT=18889 BENCH_PROBE_PORT=18083 BENCH_METRICS_PORT=18082 start_operator "${flags[@]}"; local b=$op_pid
  iptables -t nat -N IRBENCH 2>/dev/null || iptables -t nat -F IRBENCH
  iptables -t nat -C OUTPUT -p tcp -d 127.0.0.1 --dport 18890 -j IRBENCH 2>/dev/null ||
    iptables -t nat -I OUTPUT -p tcp -d 127.0.0.1 --dport 18890 -j IRBENCH
  say "| processes | requests/s | p50 | p99 | CPU of each process (% of a core) | peak RSS of each | machine busy | non-2xx |"
  say "|---|---|---|---|---|---|---|---|"
  local r
  for r in 1 2; do
    iptables -t nat -F IRBENCH
    if [ "$r" = 2 ]; then
      iptables -t nat -A IRBENCH -p tcp -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 127.0.0.1:18889
    fi
    iptables -t nat -A IRBENCH -p tcp -j DNAT --to-destination 127.0.0.1:18888
    local ca0 cb0 m0; ca0=$(cpu_s "$a"); cb0=$(cpu_s "$b"); m0=$(machine)
    wrk -t2 -c"$c" -d"${d}s" --latency -s "$work/post.lua" http://127.0.0.1:18890/facts >"$work/wrk.txt"
    local mbusy; mbusy=$(busy_pct "$m0" "$(machine)")
    local rps; rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk.txt")
    local non2xx; non2xx=$(awk '/Non-2xx/{print $5}' "$work/wrk.txt"); non2xx=${non2xx:-0}
    local cpus; cpus=$(python3 -c "print(f'{($(cpu_s "$a")-$ca0)/$d*100:.0f}% / {($(cpu_s "$b")-$cb0)/$d*100:.0f}%')")
    printf '{"case":"replicas","series":"%s","n":%s,"rps":%s}\n' "${BENCH_SERIES:-insights-remote (Rust)}" "$r" "$rps" >>bench/results/curves.jsonl
    say "| $r | $rps | $(awk '$1=="50%"{print $2}' "$work/wrk.txt") | $(awk '$1=="99%"{print $2}' "$work/wrk.txt") | $cpus | $(hwm_mib "$a") / $(hwm_mib "$b") MiB | ${mbusy}% | $non2xx |"
  done
  iptables -t nat -D OUTPUT -p tcp -d 127.0.0.1 --dport 18890 -j IRBENCH
  iptables -t nat -F IRBENCH && iptables -t nat -X IRBENCH
  kill -TERM "$a" "$b" 2>/dev/null; wait "$a" "$b" 2>/dev/null || true
  rabbitmqctl delete_queue bench-rep-q >/dev/null 2>&1 || true
  printf '%s' "{\"type\":\"direct.facts\",\"environment\":42,\"projectName\":\"bench\",\"environmentName\":\"main\",\"facts\":$body}" >"$work/msg.json"
  local m0; m0=$(machine)
  local ceil; ceil=$("$IRB" amqp-ceiling --exchange bench-ceil-x --queue bench-ceil-q --inflight "$c" --seconds "$d" --body-file "$work/msg.json")
  say "| ceiling: raw lapin confirmed publishes ($c in flight) | $(echo "$ceil" | json rps | xargs printf %.0f) | $(echo "$ceil" | json p50_ms | xargs printf %.2f)ms | $(echo "$ceil" | json p99_ms | xargs printf %.2f)ms | | | $(busy_pct "$m0" "$(machine)")% | |"
  for r in 1 2; do
    printf '{"case":"replicas","series":"ceiling: raw confirmed publishes","n":%s,"rps":%s}\n' "$r" "$(echo "$ceil" | json rps)" >>bench/results/curves.jsonl
  done
  python3 bench/plot.py replicas "processes behind one address" "POST /facts" rps
}

# Key rotation (issue 25, point 1): N environments hold tokens signed with
# key A, set by an InsightsRemoteConfig; the resource is changed to sign
# with B and still accept A. Timed until every token Secret holds a token
# that verifies with B (a paged list every 500 ms, less its own requests in
# the count); meanwhile a token signed with A and one signed with B for one
# environment are posted every 20 ms each (bench/rotation.py): A must be
# accepted throughout, B from its first acceptance on.
bench_rotation() {
  header "Signing-key rotation with N environments"
  local n=${BENCH_ROTATION:-10000}
  local new_key=bench-signing-key-rotated-fedcba9876543210
  k apply -f crds/insightsremoteconfig.yaml >/dev/null
  k wait --for=condition=Established crd/insightsremoteconfigs.insights.lagoon.sh >/dev/null
  local prefix="brot$n-$(date +%s)"
  "$IRB" tokens --count "$n" --concurrency 16 --prefix "$prefix" --mode precreate >/dev/null
  k -n default delete secret bench-key-a bench-key-b --ignore-not-found >/dev/null
  k -n default create secret generic bench-key-a --from-literal=key="$KEY" >/dev/null
  k -n default create secret generic bench-key-b --from-literal=key="$new_key" >/dev/null
  irc() {
    printf 'apiVersion: insights.lagoon.sh/v1alpha1\nkind: InsightsRemoteConfig\nmetadata: {name: bench-rotation, namespace: default}\nspec:\n  signingKey: %s\n' "$1" | k apply -f - >/dev/null
  }
  irc '{secretRef: {name: bench-key-a, key: key}}'
  BENCH_CONFIG=bench-rotation start_operator --enable-configmap-reconciler=false \
    --token-target-label insights-remote.bench/environment --rabbitmq-exchange bench-rot-x --rabbitmq-queue bench-rot-q
  "$IRB" tokens --count "$n" --prefix "$prefix" --mode wait >/dev/null
  rm -f "$work/stop"
  python3 bench/rotation.py "$KEY" "$new_key" "$prefix-0" 1000000 "$prefix" env0 http://127.0.0.1:18888/facts "$work/stop" \
    >"$work/rotation.json" &
  local prober=$!
  sleep 2
  local cpu0; cpu0=$(cpu_s "$op_pid")
  local r0; r0=$(api_requests)
  local t0; t0=$(date +%s.%N)
  irc '{secretRef: {name: bench-key-b, key: key}, previousSecretRefs: [{name: bench-key-a, key: key}]}'
  local r; r=$("$IRB" tokens --count "$n" --prefix "$prefix" --mode rotated --key "$new_key")
  local t1; t1=$(date +%s.%N)
  local r1; r1=$(api_requests)
  sleep 2
  touch "$work/stop"; wait "$prober"
  local p; p=$(cat "$work/rotation.json")
  local cpu; cpu=$(python3 -c "print(round($(cpu_s "$op_pid")-$cpu0, 2))")
  local hwm; hwm=$(hwm_mib "$op_pid")
  stop_operator
  # The bench's paged lists count as Secret requests: less them.
  local per_ns; per_ns=$(python3 -c "print(round(max(0, $r1-$r0-$(echo "$r" | json polls))/$n, 2))")
  say "| environments | all re-minted (s) | API requests per environment | CPU (s) | peak RSS | old-key token: accepted / refused | new-key token: accepted / refused before its first acceptance / after |"
  say "|---|---|---|---|---|---|---|"
  say "| $n | $(python3 -c "print(f'{$t1-$t0:.1f}')") | $per_ns | $cpu | ${hwm} MiB | $(echo "$p" | json old_ok) / $(echo "$p" | json old_refused) | $(echo "$p" | json new_ok) / $(python3 -c "print($(echo "$p" | json new_refused)-$(echo "$p" | json new_refused_after_first_ok))") / $(echo "$p" | json new_refused_after_first_ok) |"
  rabbitmqctl delete_queue bench-rot-q >/dev/null 2>&1 || true
  bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
}

# Many tenants (issue 25, point 3): POST /facts with 1 token, then with
# BENCH_TENANTS distinct tokens (each a different environment) taken in
# turn, so every token comes back only after all the others: the
# verified-token cache must hold them all or every request verifies again.
bench_tenants() {
  header "Many tenants: POST /facts with one token against many distinct tokens${BENCH_GO:+ (the Go original)}"
  local c=${BENCH_CONNECTIONS:-64} d=${BENCH_SECONDS:-15}
  local body='[{"name":"drupal-version","value":"10.3.6","source":"bench","type":"SEMVER","service":"cli"}]'
  say "| tokens in turn | requests/s | p50 | p99 | server CPU per request | peak RSS | non-2xx | against one token |"
  say "|---|---|---|---|---|---|---|---|"
  local base=""
  for n in 1 ${BENCH_TENANTS:-1000 10000}; do
    python3 bench/tokens.py "$KEY" "$n" "$work/tokens.txt"
    cat >"$work/tenants.lua" <<LUA
local tokens = {}
for line in io.lines("$work/tokens.txt") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
local body = '$body'
request = function()
  i = i % #tokens + 1
  return wrk.format("POST", "/facts", {["Content-Type"] = "application/json", ["Authorization"] = tokens[i]}, body)
end
LUA
    if [ -n "${BENCH_GO:-}" ]; then
      start_go ENABLE_CONFIGMAP_RECONCILER=false ENABLE_NAMESPACE_RECONCILER=false ENABLE_WEBSERVICE=true
    else
      start_operator --enable-configmap-reconciler=false --enable-namespace-reconciler=false \
        --rabbitmq-exchange bench-tenants-x --rabbitmq-queue bench-tenants-q
    fi
    local cpu0; cpu0=$(cpu_s "$op_pid")
    wrk -t2 -c"$c" -d"${d}s" --latency -s "$work/tenants.lua" http://127.0.0.1:18888/facts >"$work/wrk.txt"
    local cpu1; cpu1=$(cpu_s "$op_pid")
    local rps p50 p99 non2xx hwm
    rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk.txt")
    p50=$(awk '$1=="50%"{print $2}' "$work/wrk.txt")
    p99=$(awk '$1=="99%"{print $2}' "$work/wrk.txt")
    non2xx=$(awk '/Non-2xx/{print $5}' "$work/wrk.txt"); non2xx=${non2xx:-0}
    hwm=$(hwm_mib "$op_pid")
    stop_operator
    rabbitmqctl delete_queue bench-tenants-q >/dev/null 2>&1 || true
    [ -n "$base" ] || base=$rps
    printf '{"case":"tenants","series":"%s","n":%s,"rps":%s,"p99_ms":"%s","peak_rss_mib":%s}\n' \
      "${BENCH_SERIES:-insights-remote (Rust)}" "$n" "$rps" "$p99" "$hwm" >>bench/results/curves.jsonl
    say "| $n | $rps | $p50 | $p99 | $(python3 -c "print(round(($cpu1-$cpu0)/($rps*$d)*1e6))") µs | ${hwm} MiB | $non2xx | $(python3 -c "print(f'{$rps/$base*100:.0f}%')") |"
  done
  python3 bench/plot.py tenants "distinct tokens in turn" "POST /facts" rps peak_rss_mib
}

bench_configmaps() {
  header "ConfigMap forwarding: 1,000 insights ConfigMaps (500 x 100 KiB SBOM, 500 x 2 KiB inspect)"
  local n=${BENCH_CONFIGMAPS:-1000}
  # The previous run's namespaces are deleted without waiting: wait here.
  local ns
  for ns in bench-fwd bench-ceil bench-ceil-read bench-burn; do
    for _ in $(seq 1 600); do k get namespace "$ns" >/dev/null 2>&1 || break; sleep 0.2; done
  done
  # Labelled as Lagoon labels its environments' namespaces: the operator
  # takes project and environment from its namespace cache, which holds only
  # namespaces labelled lagoon.sh/project (an unlabelled one costs a GET of
  # the Namespace per ConfigMap, as the runs before `875b205` did).
  lagoon_ns() { k create namespace "$1" >/dev/null && k label namespace "$1" lagoon.sh/project=bench lagoon.sh/environment=main >/dev/null; }
  lagoon_ns bench-fwd
  start_operator --watch-namespace bench-fwd --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
    --rabbitmq-exchange bench-fwd-x --rabbitmq-queue bench-fwd-q
  local cpu0; cpu0=$(cpu_s "$op_pid")
  local m0; m0=$(machine)
  local r; r=$("$IRB" configmaps --namespace bench-fwd --count "$n" --mode operator --queue bench-fwd-q)
  local mbusy; mbusy=$(busy_pct "$m0" "$(machine)")
  local hwm; hwm=$(hwm_mib "$op_pid")
  local cpu; cpu=$(python3 -c "print(f'{($(cpu_s "$op_pid")-$cpu0):.1f}')")
  stop_operator
  k create namespace bench-ceil >/dev/null
  m0=$(machine)
  local c; c=$("$IRB" configmaps --namespace bench-ceil --count "$n" --mode ceiling)
  local cbusy; cbusy=$(busy_pct "$m0" "$(machine)")
  k create namespace bench-ceil-read >/dev/null
  local cr; cr=$("$IRB" configmaps --namespace bench-ceil-read --count "$n" --mode ceiling-read)
  lagoon_ns bench-burn
  start_operator --watch-namespace bench-burn --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
    --rabbitmq-exchange bench-fwd-x --rabbitmq-queue bench-burn-q --burn-after-reading
  local b; b=$("$IRB" configmaps --namespace bench-burn --count "$n" --mode burn --queue bench-burn-q)
  stop_operator
  say "| | seconds until all done | messages in queue | create-to-publish p50 | p99 | operator peak RSS | operator CPU | machine busy |"
  say "|---|---|---|---|---|---|---|---|"
  say "| insights-remote: all marked processed | $(echo "$r" | json done_s | xargs printf %.1f) | $(echo "$r" | json published) | $(echo "$r" | json p50_ms | xargs printf %.0f)ms | $(echo "$r" | json p99_ms | xargs printf %.0f)ms | ${hwm} MiB | ${cpu} s | ${mbusy}% |"
  say "| ceiling: plain client, create + one patch each (8 concurrent) | $(echo "$c" | json done_s | xargs printf %.1f) | | | | | | ${cbusy}% |"
  say "| ratio (ceiling time / our time) | $(python3 -c "print(f'{$(echo "$c" | json done_s)/$(echo "$r" | json done_s)*100:.0f}%')") | | | | |"
  say "| ceiling with the payload read: create, GET at that version, patch (8 concurrent) | $(echo "$cr" | json done_s | xargs printf %.1f) | | | | |"
  say "| ratio to that ceiling | $(python3 -c "print(f'{$(echo "$cr" | json done_s)/$(echo "$r" | json done_s)*100:.0f}%')") | | | | |"
  say "| insights-remote with burn-after-reading: all deleted | $(echo "$b" | json done_s | xargs printf %.1f) | $(echo "$b" | json published) | $(echo "$b" | json p50_ms | xargs printf %.0f)ms | $(echo "$b" | json p99_ms | xargs printf %.0f)ms | |"
  for q in bench-fwd-q bench-burn-q; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
  # Waited for: deleting 4,000 ConfigMaps loads the API server, and the
  # next case must not run beside it (an ingest run right after measured
  # 55% instead of about 70%).
  k delete namespace bench-fwd bench-ceil bench-ceil-read bench-burn --timeout=300s >/dev/null
}

bench_memory() {
  header "Memory in a big cluster: 10,000 unrelated 100 KiB ConfigMaps in 1,000 namespaces"
  start_operator --enable-webservice=false --rabbitmq-exchange bench-mem-x --rabbitmq-queue bench-mem-q
  sleep 10
  local empty; empty=$(hwm_mib "$op_pid")
  local f; f=$("$IRB" fill --namespaces "${BENCH_FILL_NS:-1000}" --per-namespace 10)
  sleep 5
  local during; during=$(hwm_mib "$op_pid")
  stop_operator
  # A fresh process in the full cluster: its initial lists see everything it watches.
  start_operator --enable-webservice=false --rabbitmq-exchange bench-mem-x --rabbitmq-queue bench-mem-q
  sleep 15
  local full; full=$(hwm_mib "$op_pid")
  stop_operator
  say "| operator peak RSS | MiB |"
  say "|---|---|"
  say "| empty cluster, 10 s after start | $empty |"
  say "| running while $(echo "$f" | json configmaps) ConfigMaps were created ($(echo "$f" | json seconds | xargs printf %.0f) s) | $during |"
  say "| started in the full cluster, 15 s after start | $full |"
  say "| difference (full - empty) | $(python3 -c "print(round(max($full,$during)-$empty,1))") |"
  rabbitmqctl delete_queue bench-mem-q >/dev/null 2>&1 || true
  # Wipe the 1 GB of fill: a fresh control plane is faster than deleting.
  bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
}

bench_postprocessors() {
  local n=${BENCH_PP_CONFIGMAPS:-100}
  header "Post-processors: $n insights ConfigMaps (half SBOMs) through Lagoon core and Dependency-Track"
  local dt; dt=$(bash "$root/../shared/dependency-track/run.sh" | grep '^DT_')
  local url key; url=$(echo "$dt" | sed -n 's/^DT_BASE_URL=//p' | tail -1); key=$(echo "$dt" | sed -n 's/^DT_API_KEY=//p' | tail -1)
  k create namespace bench-core >/dev/null
  start_operator --watch-namespace bench-core --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
    --rabbitmq-exchange bench-pp-x --rabbitmq-queue bench-core-q
  local c; c=$("$IRB" configmaps --namespace bench-core --count "$n" --mode operator --queue bench-core-q)
  stop_operator
  k create namespace bench-pp >/dev/null
  DEPENDENCY_TRACK_API_KEY=$key start_operator --watch-namespace bench-pp --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
    --rabbitmq-exchange bench-pp-x --rabbitmq-queue bench-pp-q \
    --enable-dependency-track-integration=true --dependency-track-api-endpoint "$url" --dependency-track-push-prod-only=false
  local r; r=$("$IRB" configmaps --namespace bench-pp --count "$n" --mode operator --queue bench-pp-q)
  local hwm; hwm=$(hwm_mib "$op_pid")
  stop_operator
  say "| | seconds until all marked processed | messages | create-to-publish p50 | p99 | operator peak RSS |"
  say "|---|---|---|---|---|---|"
  say "| Lagoon core only | $(echo "$c" | json done_s | xargs printf %.1f) | $(echo "$c" | json published) | $(echo "$c" | json p50_ms | xargs printf %.0f)ms | $(echo "$c" | json p99_ms | xargs printf %.0f)ms | |"
  say "| Lagoon core + Dependency-Track ($((n / 2)) uploads, 2 at a time, each waited until processed) | $(echo "$r" | json done_s | xargs printf %.1f) | $(echo "$r" | json published) | $(echo "$r" | json p50_ms | xargs printf %.0f)ms | $(echo "$r" | json p99_ms | xargs printf %.0f)ms | ${hwm} MiB |"
  for q in bench-core-q bench-pp-q; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
  k delete namespace bench-core bench-pp --wait=false >/dev/null
}

bench_tokens() {
  header "Tokens: 1,000 new Lagoon namespaces"
  local n=${BENCH_NAMESPACES:-1000}
  start_operator --enable-configmap-reconciler=false --enable-webservice=false --rabbitmq-enabled=false
  local r; r=$("$IRB" tokens --count "$n" --prefix benchtok --mode operator)
  local hwm; hwm=$(hwm_mib "$op_pid")
  stop_operator
  local c; c=$("$IRB" tokens --count "$n" --prefix benchceil --mode ceiling)
  say "| | namespaces created (s) | every namespace has its Secret (s) | operator peak RSS |"
  say "|---|---|---|---|"
  say "| insights-remote | $(echo "$r" | json created_s | xargs printf %.1f) | $(echo "$r" | json done_s | xargs printf %.1f) | ${hwm} MiB |"
  say "| ceiling: plain client, namespace then Secret as soon as it exists (8 concurrent) | $(echo "$c" | json created_s | xargs printf %.1f) | $(echo "$c" | json done_s | xargs printf %.1f) | |"
  say "| ratio (ceiling time / our time) | | $(python3 -c "print(f'{$(echo "$c" | json done_s)/$(echo "$r" | json done_s)*100:.0f}%')") | |"
  bash hack/control-plane.sh down >/dev/null && bash hack/control-plane.sh up >/dev/null
}

bench_footprint() {
  header "Footprint"
  local size; size=$(stat -c %s "$BIN")
  local t0; t0=$(date +%s.%N)
  start_operator --rabbitmq-exchange bench-fp-x --rabbitmq-queue bench-fp-q
  local t1; t1=$(date +%s.%N)
  sleep 10
  local idle; idle=$(rss_mib "$op_pid")
  stop_operator
  rabbitmqctl delete_queue bench-fp-q >/dev/null 2>&1 || true
  say "| release binary | start to ready (/readyz 200, broker + API server) | idle RSS after 10 s |"
  say "|---|---|---|"
  say "| $(python3 -c "print(f'{$size/1048576:.1f} MiB')") | $(python3 -c "print(f'{($t1-$t0)*1000:.0f} ms')") | $idle MiB |"
}

# A token for namespace $1, environment id $2, environment $3 of project bench.
token() { INSIGHTS_TOKEN_SECRET=$KEY "$BIN" generate-token --namespace "$1" --environment-id "$2" --project-name bench --environment-name "$3"; }

bench_hostile() {
  header "Hostile load: 32 clients posting 1 MiB bodies, one well-behaved tenant"
  local d=${BENCH_SECONDS:-15}
  local bad good
  bad=$(token bench-hostile 66 evil)
  good=$(token bench-good 42 main)
  say "| body | peak RSS | hostile answers | tenant answers | tenant p50 / p99 |"
  say "|---|---|---|---|---|"
  for kind in many full; do
    start_operator --enable-configmap-reconciler=false --enable-namespace-reconciler=false \
      --rabbitmq-exchange bench-hostile-x --rabbitmq-queue bench-hostile-q
    local r; r=$(python3 bench/hostile.py 18888 "$bad" "$good" 32 "$d" "$kind")
    local hwm; hwm=$(hwm_mib "$op_pid")
    stop_operator
    rabbitmqctl delete_queue bench-hostile-q >/dev/null 2>&1 || true
    local label; [ "$kind" = many ] && label="80,000 minimal facts" || label="10,000 facts of 100 bytes"
    say "| $label | $hwm MiB | $(echo "$r" | json hostile) | $(echo "$r" | json tenant) | $(echo "$r" | json tenant_p50_ms) / $(echo "$r" | json tenant_p99_ms) ms |"
  done
}

# Hostile connections (issue 26): one attack per fresh operator, a victim
# tenant posting ~10 small facts a second on fresh connections from its own
# address, the readiness probe polled (bench/attacks.py). BENCH_ATTACKS
# picks attacks; BENCH_SECONDS their length; BENCH_OPERATOR_ARGS adds flags
# (e.g. --webservice-rate-limit 20).
bench_attacks() {
  header "Hostile connections: one attack at a time, a victim tenant and the probe measured${BENCH_OPERATOR_ARGS:+ ($BENCH_OPERATOR_ARGS)}"
  local d=${BENCH_SECONDS:-20}
  local bad good
  bad=$(token bench-hostile 66 evil)
  good=$(token bench-good 42 main)
  say "| attack | victim 200 | victim p50 / p99 | probe answers | server CPU | peak RSS | RSS idle → 30 s after | victim after | attacker got |"
  say "|---|---|---|---|---|---|---|---|---|"
  for a in ${BENCH_ATTACKS:-nonreading heads descriptors amplify large declared}; do
    # shellcheck disable=SC2086 # BENCH_OPERATOR_ARGS: extra flags, split on spaces
    start_operator --enable-configmap-reconciler=false --enable-namespace-reconciler=false \
      --rabbitmq-exchange bench-attack-x --rabbitmq-queue bench-attack-q ${BENCH_OPERATOR_ARGS:-}
    sleep 2
    local r; r=$(python3 bench/attacks.py "$a" 18888 18081 "$op_pid" "$d" "$bad" "$good")
    stop_operator
    rabbitmqctl delete_queue bench-attack-q >/dev/null 2>&1 || true
    say "| $a | $(echo "$r" | json victim_ok_pct)% $(echo "$r" | json victim) | $(echo "$r" | json victim_p50_ms) / $(echo "$r" | json victim_p99_ms) ms | $(echo "$r" | json probes) | $(echo "$r" | json cpu_pct)% | $(echo "$r" | json peak_mib) MiB | $(echo "$r" | json idle_mib) → $(echo "$r" | json after_30s_mib) MiB | $(echo "$r" | json victim_after) | $(echo "$r" | json attacker) |"
  done
}

# The broker killed (SIGKILL) or stopped cleanly while a client posts a fact
# every 10 ms (bench/recovery.py); the time from the broker's AMQP port
# opening again to the first 200, with upstream's default retry interval
# (30 s).
bench_recovery() {
  header "Broker recovery: first 200 after the broker returns"
  local reps=${BENCH_REPS:-3}
  BENCH_RETRY=30 start_operator --enable-configmap-reconciler=false --enable-namespace-reconciler=false \
    --rabbitmq-exchange bench-rec-x --rabbitmq-queue bench-rec-q
  local token
  token=$(INSIGHTS_TOKEN_SECRET=$KEY "$BIN" generate-token --namespace bench-rec --environment-id 42 --project-name bench --environment-name main)
  python3 bench/recovery.py http://127.0.0.1:18888/facts "$token" >"$work/probe.log" &
  local probe=$!
  pids+=("$probe")
  # Waits until the probe's log has $1 lines.
  lines() { for _ in $(seq 1 3000); do [ "$(wc -l <"$work/probe.log")" -ge "$1" ] && return 0; sleep 0.02; done; echo "probe: no event $1" >&2; cat "$work/probe.log" >&2; exit 1; }
  port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
  # Records when the AMQP port opens in $work/port.
  watch_port() { (until port_open; do sleep 0.005; done; date +%s.%N >"$work/port") & }
  lines 1
  local n=1 kind
  say "| outage | broker down for | port open to first 200 (each run) | start command to first 200 |"
  say "|---|---|---|---|"
  for kind in clean kill; do
    local from_port=() from_start=()
    for _ in $(seq 1 "$reps"); do
      if [ "$kind" = clean ]; then rabbitmqctl stop_app >/dev/null; else pkill -KILL -f beam.smp; fi
      n=$((n + 1)); lines "$n"
      if [ "$kind" = clean ]; then sleep 2; else sleep 10; fi
      rm -f "$work/port"; watch_port
      local t0; t0=$(date +%s.%N)
      if [ "$kind" = clean ]; then rabbitmqctl start_app >/dev/null; else bash hack/deps.sh >/dev/null 2>&1; fi
      n=$((n + 1)); lines "$n"
      for _ in $(seq 1 500); do [ -s "$work/port" ] && break; sleep 0.01; done
      local back; back=$(sed -n "${n}p" "$work/probe.log" | json at)
      from_port+=("$(python3 -c "print(f'{($back-$(cat "$work/port")):.2f}')")")
      from_start+=("$(python3 -c "print(f'{($back-$t0):.2f}')")")
    done
    local down; [ "$kind" = clean ] && down="2 s (stop_app, start_app)" || down="10 s (SIGKILL, then started)"
    say "| $kind | $down | ${from_port[*]} s | ${from_start[*]} s |"
  done
  kill "$probe" 2>/dev/null || true
  stop_operator
  rabbitmqctl delete_queue bench-rec-q >/dev/null 2>&1 || true
}

# Large SBOMs uploaded to the real Dependency-Track (issue 22's goal: peak
# RSS under 128 MiB with four 30 MiB SBOMs at once; 222-260 MiB before the
# uploads streamed). Per size in BENCH_SBOM_MIB, a fresh operator with four
# upload slots and four SBOM ConfigMaps (one BOM, four services) created at
# once in a Lagoon environment namespace. The CycloneDX 1.5 JSON is about
# that many MiB: components of about 6.6 KiB, most of it the MIT text
# repeated, so the gzip fits in a ConfigMap and Dependency-Track has few
# components to process (2,177 per 14 MiB: about 15 s for one BOM here;
# 11,724 components of 1.2 KiB took it 70 s alone and 6 minutes for four).
# Ends when all four are marked processed or carry a Dependency-Track
# status (success or failure), at most BENCH_DT_WAIT seconds.
# Dependency-Track 4.14.2 answers `PUT /api/v1/bom` whose base64 BOM is
# longer than 20,000,000 characters (Jackson's string limit: a BOM over
# 15,000,000 bytes) with 400 once it has read that far, so the default
# sizes are 30 (refused part-way: the goal's size) and 14 (accepted: the
# whole body sent). DEPENDENCY_TRACK_TIMEOUT (BENCH_DT_TIMEOUT, 120s)
# bounds the wait for processing, which is not what is measured. The
# Dependency-Track projects made are deleted once it has finished with them
# (their metrics updated: the last step after an upload), at most
# BENCH_DT_SETTLE seconds later.
bench_dtmemory() {
  local sizes=${BENCH_SBOM_MIB:-30 14} n=4 wait_s=${BENCH_DT_WAIT:-600}
  header "Dependency-Track uploads: $n large SBOMs at once (sizes ${sizes// /, } MiB decompressed), $n upload slots"
  local dt; dt=$(bash "$root/../shared/dependency-track/run.sh" 2>/dev/null | grep '^DT_')
  local url key; url=$(echo "$dt" | sed -n 's/^DT_BASE_URL=//p' | tail -1); key=$(echo "$dt" | sed -n 's/^DT_API_KEY=//p' | tail -1)
  dt_api() { curl -sS -m 300 -H "X-Api-Key: $key" -H 'Accept: application/json' "$@"; }
  local rows=() details=() children=() t0s=()
  local -A at
  local mib
  for mib in $sizes; do
    local ns=bench-dtmem-$mib env=sbom-${mib}mib
    for _ in $(seq 1 600); do k get namespace "$ns" >/dev/null 2>&1 || break; sleep 0.2; done
    k create namespace "$ns" >/dev/null
    k label namespace "$ns" lagoon.sh/project=bench-dtmem lagoon.sh/environment="$env" \
      lagoon.sh/environmentId=$((4200 + mib)) lagoon.sh/environmentType=production >/dev/null
    local sizes_of; sizes_of=$(python3 - "$work/dtmem-$mib.json" "$mib" "$env" "$n" <<'PY'
import base64, gzip, json, sys
out, mib, env, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
mit = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files "
       "(the \"Software\"), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, "
       "merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished "
       "to do so, subject to the following conditions: The above copyright notice and this permission notice shall be included in all "
       "copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR "
       "IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. "
       "IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF "
       "CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.\n")
def component(i):
    name, version = f"bench-pkg-{i:06d}", f"{i % 7}.{i % 13}.{i % 101}"
    purl = f"pkg:npm/{name}@{version}"
    return {"bom-ref": purl, "type": "library", "name": name, "version": version, "purl": purl,
            "description": "A generated package of the insights-remote dtmemory benchmark.",
            "licenses": [{"license": {"id": "MIT", "text": {"contentType": "text/plain", "content": mit * 6}}}],
            "properties": [{"name": "syft:package:foundBy", "value": "javascript-package-cataloger"},
                           {"name": "syft:package:language", "value": "javascript"},
                           {"name": "syft:package:type", "value": "npm"},
                           {"name": "syft:location:0:path", "value": f"/app/node_modules/{name}/package.json"}]}
bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "serialNumber": "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79", "version": 1,
       "metadata": {"timestamp": "2026-12-06T00:00:00Z",
                    "tools": {"components": [{"type": "application", "author": "anchore", "name": "syft", "version": "1.18.1"}]},
                    "component": {"bom-ref": "bench-image", "type": "container", "name": "bench/cli", "version": "latest"}}}
each = len(json.dumps(component(0), separators=(",", ":"))) + 1
bom["components"] = [component(i) for i in range((mib * 1048576 - 1024) // each)]
raw = json.dumps(bom, separators=(",", ":")).encode()
gz = gzip.compress(raw, 9)
# Under the operator's 32 MiB decompression limit and the ConfigMap's 1 MiB.
assert len(raw) < 32 * 1048576 and len(gz) < 1048576 - 4096, (len(raw), len(gz))
items = [{"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": f"lagoon-insights-sbom-svc{s}",
                       "labels": {"lagoon.sh/insightsType": "sbom-gz", "insights.lagoon.sh/type": "sbom",
                                  "lagoon.sh/buildName": "lagoon-build-bench", "lagoon.sh/project": "bench-dtmem",
                                  "lagoon.sh/environment": env, "lagoon.sh/service": f"svc{s}",
                                  "lagoon.sh/environmentType": "production", "lagoon.sh/buildType": "branch"},
                       "annotations": {"lagoon.sh/branch": env, "core.insights.lagoon.sh/enabled": "true"}},
          "binaryData": {f"svc{s}.cyclonedx.json.gz": base64.b64encode(gz).decode()}} for s in range(1, n + 1)]
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(out, "w"))
print(len(bom["components"]), f"{len(raw) / 1048576:.1f}", f"{len(gz) / 1048576:.2f}")
PY
)
    local ncomp bom_mib gz_mib; read -r ncomp bom_mib gz_mib <<<"$sizes_of"
    local c; for c in $(seq 1 "$n"); do children+=("bench-dtmem-$env-svc$c"); done
    DEPENDENCY_TRACK_API_KEY=$key DEPENDENCY_TRACK_MAX_CONCURRENT=$n DEPENDENCY_TRACK_TIMEOUT=${BENCH_DT_TIMEOUT:-120s} \
      start_operator --watch-namespace "$ns" --enable-configmap-reconciler=true --enable-namespace-reconciler=false --enable-webservice=false \
      --rabbitmq-exchange bench-dtmem-x --rabbitmq-queue bench-dtmem-q \
      --enable-dependency-track-integration=true --dependency-track-api-endpoint "$url"
    sleep 5
    local before; before=$(rss_mib "$op_pid")
    local cpu0; cpu0=$(cpu_s "$op_pid")
    t0s+=("$(date +%s%3N)")
    local t0; t0=$(date +%s.%N)
    k create -n "$ns" -f "$work/dtmem-$mib.json" >/dev/null
    # Seconds from the create to each ConfigMap's processed label or Dependency-Track status.
    at=()
    local name processed status
    while :; do
      while IFS=$'\t' read -r name processed status; do
        if [ -n "$name" ] && [ -z "${at[$name]:-}" ] && [ -n "$processed$status" ]; then
          at[$name]=$(python3 -c "print(f'{$(date +%s.%N)-$t0:.1f}')")
        fi
      done < <(k get configmaps -n "$ns" -l lagoon.sh/insightsType=sbom-gz \
        -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.metadata.labels.lagoon\.sh/insightsProcessed}{"\t"}{.metadata.annotations.dependencytrack\.insights\.lagoon\.sh/default-status}{"\n"}{end}')
      [ "${#at[@]}" -ge "$n" ] && break
      python3 -c "import sys; sys.exit(0 if $(date +%s.%N)-$t0 < $wait_s else 1)" || break
      sleep 1
    done
    local took; took=$(python3 -c "print(f'{$(date +%s.%N)-$t0:.1f}')")
    local hwm after cpu; hwm=$(hwm_mib "$op_pid"); after=$(rss_mib "$op_pid"); cpu=$(python3 -c "print(f'{($(cpu_s "$op_pid")-$cpu0):.1f}')")
    stop_operator
    cp "$work/operator.log" "$work/operator-dtmem-$mib.log"
    local ok failed; ok=$(grep -c 'SBOM uploaded to Dependency-Track' "$work/operator.log" || true); failed=$(grep -c 'Dependency-Track upload failed' "$work/operator.log" || true)
    rows+=("| $bom_mib MiB ($ncomp components, $gz_mib MiB gzipped) | $before MiB | **$hwm MiB** | $after MiB | ${#at[@]} of $n in $took s | ${cpu} s | $ok uploaded, $failed failed |")
    local cm
    for cm in $(k get configmaps -n "$ns" -l lagoon.sh/insightsType=sbom-gz -o jsonpath='{.items[*].metadata.name}'); do
      details+=("| $bom_mib MiB | $cm | ${at[$cm]:-not within ${wait_s} s} | $(k get configmap -n "$ns" "$cm" -o jsonpath='{.metadata.annotations.core\.insights\.lagoon\.sh/status} | {.metadata.annotations.dependencytrack\.insights\.lagoon\.sh/default-status} | {.metadata.annotations.dependencytrack\.insights\.lagoon\.sh/default-status-error}') |")
    done
    rabbitmqctl delete_queue bench-dtmem-q >/dev/null 2>&1 || true
    k delete namespace "$ns" --wait=false >/dev/null
  done
  say "| SBOM (each of $n) | RSS before | operator peak RSS (VmHWM) | RSS at the end | ConfigMaps done | operator CPU | uploads (operator log) |"
  say "|---|---|---|---|---|---|---|"
  local r; for r in "${rows[@]}"; do say "$r"; done
  say ""
  say "| SBOM | ConfigMap | done after (s) | core status | Dependency-Track status | Dependency-Track error |"
  say "|---|---|---|---|---|---|"
  for r in "${details[@]}"; do say "$r"; done
  say ""
  say "Goal: peak RSS under 128 MiB with four 30 MiB SBOMs at once. Operator logs: $work/operator-dtmem-*.log"
  # Deleting a project while Dependency-Track still analyses it fails after
  # minutes (table locks, then a foreign key from the metrics being
  # written): first wait until each project it made has metrics from after
  # its round began (the last step after an upload; projects of refused
  # uploads do not exist), then delete the root, a collection: everything
  # under it goes with it.
  local deadline=$((SECONDS + ${BENCH_DT_SETTLE:-600})) i pending uuid
  while :; do
    pending=0
    for i in "${!children[@]}"; do
      for uuid in $(dt_api -G "$url/api/v1/project" --data-urlencode "name=${children[$i]}" | python3 -c "import json,sys; print(' '.join(p['uuid'] for p in json.load(sys.stdin)))"); do
        dt_api "$url/api/v1/metrics/project/$uuid/current" |
          python3 -c "import json,sys; t=sys.stdin.read().strip(); sys.exit(0 if t and json.loads(t).get('lastOccurrence', 0) >= ${t0s[$((i / n))]} else 1)" ||
          pending=$((pending + 1))
      done
    done
    { [ "$pending" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ]; } && break
    sleep 5
  done
  [ "$pending" -eq 0 ] || echo "Dependency-Track has not finished with $pending projects after ${BENCH_DT_SETTLE:-600} s; deleting anyway" >&2
  local t; t=$(date +%s)
  for uuid in $(dt_api -G "$url/api/v1/project" --data-urlencode "name=bench-dtmem" | python3 -c "import json,sys; print(' '.join(p['uuid'] for p in json.load(sys.stdin)))"); do
    for _ in 1 2 3; do
      [ "$(dt_api -o /dev/null -w '%{http_code}' -X DELETE "$url/api/v1/project/$uuid" || true)" = 204 ] && break
      sleep 30
    done
  done
  echo "Dependency-Track projects of this run deleted ($(($(date +%s) - t)) s; $((SECONDS + ${BENCH_DT_SETTLE:-600} - deadline)) s waited for it to finish with them)" >&2
}

# On the real node (hack/node.sh): the hand-over and rolling-upgrade loss
# counts and the pod's cgroup peak under hostile load, from the node tests'
# printed lines (tests/node_ha.rs), three runs.
bench_nodeha() {
  bash hack/node.sh up >&2
  say "| run | hand-over | rollout | posts ok / failed | ConfigMaps / forwarded / twice | pod peak under hostile load |"
  say "|---|---|---|---|---|---|"
  local i
  for i in 1 2 3; do
    local o ha hm
    o=$(KUBECONFIG=$(bash hack/control-plane.sh kubeconfig) cargo test --quiet --test node_ha -- --nocapture --test-threads 1 2>&1 || true)
    ha=$(echo "$o" | grep -o 'nodeha: .*' | head -1)
    hm=$(echo "$o" | grep -o 'nodehostile: .*' | head -1)
    v() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
    say "| $i | $(v "$ha" handover_ms) ms | $(v "$ha" roll_ms) ms | $(v "$ha" posts_ok) / $(v "$ha" posts_failed) | $(v "$ha" configmaps) / $(v "$ha" forwarded) / $(v "$ha" forwarded_twice) | $(v "$hm" peak_mib) MiB |"
  done
}

case "${1:-all}" in
  nodeha) bench_nodeha ;;
  recovery) bench_recovery ;;
  hostile) bench_hostile ;;
  attacks) bench_attacks ;;
  ingest) bench_ingest ;;
  configmaps) bench_configmaps ;;
  postprocessors) bench_postprocessors ;;
  dtmemory) bench_dtmemory ;;
  memory) bench_memory ;;
  tokens) bench_tokens ;;
  tenants) bench_tenants ;;
  environments) bench_environments ;;
  backlog) bench_backlog ;;
  backlog-dt) BENCH_DT=1 bench_backlog ;;
  rotation) bench_rotation ;;
  replicas) bench_replicas ;;
  footprint) bench_footprint ;;
  all) bench_footprint; bench_ingest; bench_hostile; bench_attacks; bench_configmaps; bench_postprocessors; bench_tokens; bench_memory; bench_recovery ;;
  *) echo "usage: bench/run.sh nodeha|ingest|recovery|hostile|attacks|configmaps|postprocessors|dtmemory|memory|tokens|tenants|environments|backlog|backlog-dt|rotation|replicas|footprint|all" >&2; exit 2 ;;
esac
echo "results appended to $out"
