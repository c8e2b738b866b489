#!/usr/bin/env bash
# Builds and runs a real, minimal Kubernetes control plane (etcd,
# kube-apiserver, kube-controller-manager) on loopback, for tests and demos.
# No container engine, no kubelet: objects are stored and controllers for
# namespaces, garbage collection, service accounts, RBAC aggregation,
# Deployments, ReplicaSets and EndpointSlices run, but no pod starts until
# hack/node.sh adds a node (whose taint keeps every pod off it unless its
# namespace grants the toleration). See hack/README.md.
#
# Usage: hack/control-plane.sh {up|down|status|kubeconfig|env|build|kubectl ARGS...}
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CP_MOD_DIR="${SCRIPT_DIR}/cp"

CACHE_DIR="${INSIGHTS_CP_CACHE:-${HOME}/.cache/insights-remote/control-plane}"
STATE_DIR="${INSIGHTS_CP_STATE:-${CACHE_DIR}/state}"
API_PORT="${INSIGHTS_CP_PORT:-6443}"
ETCD_CLIENT_PORT="${INSIGHTS_CP_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${INSIGHTS_CP_ETCD_PEER_PORT:-23800}"
KCM_PORT="${INSIGHTS_CP_KCM_PORT:-10357}"
READY_TIMEOUT="${INSIGHTS_CP_TIMEOUT:-90}"
STOP_TIMEOUT="${INSIGHTS_CP_STOP_TIMEOUT:-15}"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1" # first address of SERVICE_CIDR: the `kubernetes` Service

# Versions are read from hack/cp/go.mod, the single place they are pinned.
mod_version() {
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "${CP_MOD_DIR}/go.mod"
}
K8S_VERSION="$(mod_version k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version go.etcd.io/etcd/server/v3)"
if [[ -z "${K8S_VERSION}" || -z "${ETCD_VERSION}" ]]; then
  echo "control-plane: cannot read pinned versions from ${CP_MOD_DIR}/go.mod" >&2
  exit 1
fi
BIN_DIR="${CACHE_DIR}/bin-${K8S_VERSION}-etcd-${ETCD_VERSION}"

PKI_DIR="${STATE_DIR}/pki"
LOG_DIR="${STATE_DIR}/logs"
RUN_DIR="${STATE_DIR}/run"
ETCD_DATA_DIR="${STATE_DIR}/etcd-data"
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
KCM_KUBECONFIG="${STATE_DIR}/kube-controller-manager.kubeconfig"

# Start order; stop order is the reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)

log() { echo "control-plane: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

find_go() {
  if [[ -n "${INSIGHTS_CP_GO:-}" ]]; then
    echo "${INSIGHTS_CP_GO}"
  elif command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    echo /usr/local/go/bin/go
  else
    die "no Go toolchain found (set INSIGHTS_CP_GO)"
  fi
}

binaries_present() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "${BIN_DIR}/${b}" ]] || return 1
  done
}

# ---------------------------------------------------------------- build

# The linker flags of every Kubernetes binary built here (also hack/node.sh):
# stripped, with the pinned version stamped in.
k8s_ldflags() {
  local minor ver_pkg ldflags=(-s -w)
  minor="$(echo "${K8S_VERSION}" | cut -d. -f2)"
  for ver_pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=(
      "-X ${ver_pkg}.gitVersion=${K8S_VERSION}"
      "-X ${ver_pkg}.gitMajor=1"
      "-X ${ver_pkg}.gitMinor=${minor}"
      "-X ${ver_pkg}.gitTreeState=clean"
    )
  done
  echo "${ldflags[*]}"
}

cmd_build() {
  mkdir -p "${CACHE_DIR}"
  if binaries_present; then
    log "binaries up to date in ${BIN_DIR}"
    return 0
  fi
  # One builder at a time; a concurrent `up` waits here and then finds the
  # binaries built.
  exec 8>"${CACHE_DIR}/build.lock"
  flock 8
  if binaries_present; then
    exec 8>&-
    log "binaries up to date in ${BIN_DIR}"
    return 0
  fi

  local go_bin tmp start
  go_bin="$(find_go)"
  log "building kubernetes ${K8S_VERSION} and etcd ${ETCD_VERSION} into ${BIN_DIR}"
  log "(first build takes a long while; later runs reuse the binaries)"
  start=${SECONDS}
  tmp="$(mktemp -d "${CACHE_DIR}/.build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: tmp is local
  trap "rm -rf '${tmp}'" EXIT


  (
    cd "${CP_MOD_DIR}"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-p=${INSIGHTS_CP_BUILD_JOBS:-2} -trimpath -buildvcs=false -mod=readonly"
    "${go_bin}" build -ldflags="$(k8s_ldflags)" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl
    "${go_bin}" build -ldflags="-s -w" -o "${tmp}/etcd" go.etcd.io/etcd/server/v3
  )
  mkdir -p "${BIN_DIR}"
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "${tmp}/${b}" ]] || die "build did not produce ${b}"
    mv -f "${tmp}/${b}" "${BIN_DIR}/${b}"
  done
  rm -rf "${tmp}"
  trap - EXIT
  exec 8>&-
  log "built in $((SECONDS - start))s: $(du -sh "${BIN_DIR}" | cut -f1) in ${BIN_DIR}"
}

# ---------------------------------------------------------------- processes

pid_file() { echo "${RUN_DIR}/$1.pid"; }

# Prints the pid of component $1 if the pid file names a live process that is
# still our binary (guards against a stale pid file whose pid was reused).
running_pid() {
  local f pid exe
  f="$(pid_file "$1")"
  [[ -f "${f}" ]] || return 1
  pid="$(cat "${f}" 2>/dev/null || true)"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  exe="$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null | head -n1 || true)"
  [[ "${exe}" == "${BIN_DIR}/$1" ]] || return 1
  echo "${pid}"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# start NAME ARGS...: runs ${BIN_DIR}/NAME in its own session, detached from
# this shell (no inherited lock fd, stdin from /dev/null), logs to LOG_DIR.
start() {
  local name="$1"
  shift
  local logf="${LOG_DIR}/${name}.log"
  : >"${logf}"
  setsid "${BIN_DIR}/${name}" "$@" </dev/null >>"${logf}" 2>&1 9>&- 8>&- &
  echo $! >"$(pid_file "${name}")"
  log "started ${name} (pid $!, log ${logf})"
}

# stop_group NAME...: SIGTERM to each named component that is running, then
# SIGKILL to whatever is still alive after STOP_TIMEOUT seconds.
stop_group() {
  local c pid i pids=()
  for c in "$@"; do
    if pid="$(running_pid "${c}")"; then
      log "stopping ${c} (pid ${pid})"
      kill -TERM "${pid}" 2>/dev/null || true
      pids+=("${pid}")
    fi
    rm -f "$(pid_file "${c}")"
  done
  ((${#pids[@]} > 0)) || return 0
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "${pids[@]}" || return 0
    sleep 0.1
  done
  log "still running after ${STOP_TIMEOUT}s: sending SIGKILL to ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "${pids[@]}" || return 0
    sleep 0.1
  done
  die "could not stop pids ${pids[*]}"
}

# Stops everything this script started (by pid file only). The apiserver
# shuts down much faster while etcd is still there, so etcd goes last.
stop_all() {
  stop_group kube-controller-manager kube-apiserver
  stop_group etcd
  # etcd data is wiped so that every `up` starts from an empty cluster.
  rm -rf "${ETCD_DATA_DIR}"
}

# alive PID...: true if any of the pids is a live process. A zombie (exited,
# not yet reaped by whoever inherited it) counts as gone.
alive() {
  local p state
  for p in "$@"; do
    state="$(awk '{ print $3 }' "/proc/${p}/stat" 2>/dev/null || true)"
    [[ -n "${state}" && "${state}" != "Z" ]] && return 0
  done
  return 1
}

lock_state() {
  mkdir -p "${STATE_DIR}"
  exec 9>"${STATE_DIR}/.lock"
  flock -w 900 9 || die "timed out waiting for another control-plane.sh run"
}

# ---------------------------------------------------------------- pki

# sign NAME SUBJECT EXTENSIONS: key + certificate signed by our CA.
sign() {
  local name="$1" subj="$2" ext="$3"
  openssl genrsa -out "${PKI_DIR}/${name}.key" 2048 2>/dev/null
  openssl req -new -key "${PKI_DIR}/${name}.key" -subj "${subj}" \
    -out "${PKI_DIR}/${name}.csr" 2>/dev/null
  printf '%s\n' "${ext}" >"${PKI_DIR}/${name}.ext"
  openssl x509 -req -in "${PKI_DIR}/${name}.csr" \
    -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
    -extfile "${PKI_DIR}/${name}.ext" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
  rm -f "${PKI_DIR}/${name}.csr" "${PKI_DIR}/${name}.ext"
}

pki_valid() {
  local f
  for f in ca.crt ca.key apiserver.crt apiserver.key admin.crt admin.key \
    kcm.crt kcm.key kubelet-client.crt kubelet-client.key sa.key sa.pub; do
    [[ -s "${PKI_DIR}/${f}" ]] || return 1
  done
  for f in ca apiserver admin kcm kubelet-client; do
    openssl x509 -checkend 86400 -noout -in "${PKI_DIR}/${f}.crt" >/dev/null 2>&1 || return 1
  done
}

ensure_pki() {
  if pki_valid; then
    return 0
  fi
  log "generating certificates in ${PKI_DIR}"
  rm -rf "${PKI_DIR}"
  mkdir -p "${PKI_DIR}"
  chmod 700 "${PKI_DIR}"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout "${PKI_DIR}/ca.key" -out "${PKI_DIR}/ca.crt" \
    -subj "/CN=insights-remote-control-plane-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  local leaf="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
  sign apiserver "/CN=kube-apiserver" "${leaf}
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=admin" "${leaf}
extendedKeyUsage=clientAuth"
  sign kcm "/O=system:masters/CN=system:kube-controller-manager" "${leaf}
extendedKeyUsage=clientAuth"
  # The API server's identity towards a kubelet (logs, exec), for hack/node.sh.
  sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${leaf}
extendedKeyUsage=clientAuth"
  openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
  chmod 600 "${PKI_DIR}"/*.key
}

# write_kubeconfig FILE USER: self-contained kubeconfig (embedded certs).
write_kubeconfig() {
  local file="$1" user="$2" tmp
  tmp="${file}.tmp"
  cat >"${tmp}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: insights-remote
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority-data: $(base64 -w0 <"${PKI_DIR}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"${PKI_DIR}/${user}.crt")
    client-key-data: $(base64 -w0 <"${PKI_DIR}/${user}.key")
contexts:
- name: insights-remote
  context:
    cluster: insights-remote
    user: ${user}
    namespace: default
current-context: insights-remote
EOF
  chmod 600 "${tmp}"
  mv -f "${tmp}" "${file}"
}

# ---------------------------------------------------------------- health

kubectl_raw() {
  "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" --request-timeout=3s \
    get --raw "$1" 2>/dev/null
}

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_CLIENT_PORT}/health" 2>/dev/null |
    grep -q '"health":"true"'
}

apiserver_ready() { [[ "$(kubectl_raw /readyz || true)" == "ok" ]]; }

kcm_healthy() {
  [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:${KCM_PORT}/healthz" 2>/dev/null || true)" == "ok" ]]
}

# wait_for NAME CHECK: polls CHECK until it succeeds, NAME dies, or timeout.
wait_for() {
  local name="$1" check="$2" deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if "${check}"; then
      return 0
    fi
    if ! running_pid "${name}" >/dev/null; then
      fail_up "${name} exited during startup"
    fi
    sleep 0.5
  done
  fail_up "${name} not ready after ${READY_TIMEOUT}s"
}

fail_up() {
  local c
  log "error: $*"
  for c in "${COMPONENTS[@]}"; do
    if [[ -s "${LOG_DIR}/${c}.log" ]]; then
      echo "----- last 40 lines of ${LOG_DIR}/${c}.log -----" >&2
      tail -n 40 "${LOG_DIR}/${c}.log" >&2
    fi
  done
  log "stopping whatever was started"
  stop_all
  exit 1
}

# ---------------------------------------------------------------- commands

start_apiserver() {
  start kube-apiserver \
    --etcd-servers="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="${API_PORT}" \
    --cert-dir="${STATE_DIR}/apiserver-certs" \
    --tls-cert-file="${PKI_DIR}/apiserver.crt" \
    --tls-private-key-file="${PKI_DIR}/apiserver.key" \
    --client-ca-file="${PKI_DIR}/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${PKI_DIR}/sa.pub" \
    --service-account-signing-key-file="${PKI_DIR}/sa.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --authorization-mode=Node,RBAC \
    --kubelet-client-certificate="${PKI_DIR}/kubelet-client.crt" \
    --kubelet-client-key="${PKI_DIR}/kubelet-client.key" \
    --enable-admission-plugins=PodTolerationRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --endpoint-reconciler-type=none \
    --profiling=false \
    --v=1
  wait_for kube-apiserver apiserver_ready
}

cmd_up() {
  cmd_build
  lock_state
  mkdir -p "${LOG_DIR}" "${RUN_DIR}"

  local c n=0
  for c in "${COMPONENTS[@]}"; do
    if running_pid "${c}" >/dev/null; then n=$((n + 1)); fi
  done
  if ((n == ${#COMPONENTS[@]})) && apiserver_ready; then
    log "already running; kubeconfig: ${KUBECONFIG_PATH}"
    return 0
  fi
  if ((n > 0)); then
    log "control plane is partly running or unhealthy; restarting it from scratch"
  fi
  stop_all # also clears stale pid files and old etcd data

  local p lo=32768 hi=60999
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  for p in "${API_PORT}" "${ETCD_CLIENT_PORT}" "${ETCD_PEER_PORT}" "${KCM_PORT}"; do
    if ((p >= lo && p <= hi)); then
      log "warning: port ${p} is in the ephemeral range ${lo}-${hi}; an outgoing connection may hold it"
    fi
    if port_in_use "${p}"; then
      die "127.0.0.1:${p} is already in use by another process (see INSIGHTS_CP_*PORT in hack/README.md)"
    fi
  done

  ensure_pki
  write_kubeconfig "${KUBECONFIG_PATH}" admin
  write_kubeconfig "${KCM_KUBECONFIG}" kcm
  local start_t=${SECONDS}

  start etcd \
    --name=insights-cp \
    --data-dir="${ETCD_DATA_DIR}" \
    --listen-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="insights-cp=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --quota-backend-bytes=8589934592 \
    --log-level=warn
  wait_for etcd etcd_healthy

  start_apiserver

  start kube-controller-manager \
    --kubeconfig="${KCM_KUBECONFIG}" \
    --authentication-kubeconfig="${KCM_KUBECONFIG}" \
    --authorization-kubeconfig="${KCM_KUBECONFIG}" \
    --authentication-skip-lookup=true \
    --bind-address=127.0.0.1 \
    --secure-port="${KCM_PORT}" \
    --cert-dir="${STATE_DIR}/kcm-certs" \
    --controllers=namespace-controller,garbage-collector-controller,serviceaccount-token-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,endpointslice-controller,node-lifecycle-controller,pod-garbage-collector-controller \
    --service-account-private-key-file="${PKI_DIR}/sa.key" \
    --root-ca-file="${PKI_DIR}/ca.crt" \
    --use-service-account-credentials=false \
    --leader-elect=false \
    --profiling=false \
    --v=1
  wait_for kube-controller-manager kcm_healthy

  log "ready in $((SECONDS - start_t))s: https://127.0.0.1:${API_PORT}"
  log "kubeconfig: ${KUBECONFIG_PATH}"
}

# Stops only kube-apiserver, keeps it down for $1 seconds (default 0), and
# starts it again on the same etcd data: what clients see when the API
# server restarts.
cmd_restart_apiserver() {
  lock_state
  running_pid kube-apiserver >/dev/null || die "kube-apiserver is not running (run up)"
  stop_group kube-apiserver
  sleep "${1:-0}"
  start_apiserver
  log "kube-apiserver restarted"
}

cmd_down() {
  lock_state
  stop_all
  log "stopped"
}

# print_processes NAME...: each component's pid or "not running"; fails if
# any is not running (also hack/node.sh).
print_processes() {
  local c pid all=0
  for c in "$@"; do
    if pid="$(running_pid "${c}")"; then
      printf '%-24s running (pid %s)\n' "${c}" "${pid}"
    else
      printf '%-24s not running\n' "${c}"
      all=1
    fi
  done
  return "${all}"
}

cmd_status() {
  local all=0
  print_processes "${COMPONENTS[@]}" || all=1
  local ready="unreachable"
  if [[ -x "${BIN_DIR}/kubectl" && -f "${KUBECONFIG_PATH}" ]]; then
    ready="$(kubectl_raw /readyz || echo unreachable)"
  fi
  printf '%-24s %s\n' "/readyz" "${ready}"
  printf '%-24s %s\n' "kubeconfig" "${KUBECONFIG_PATH}"
  [[ "${ready}" == "ok" ]] || all=1
  return "${all}"
}

cmd_kubectl() {
  [[ -x "${BIN_DIR}/kubectl" ]] || die "kubectl not built yet: run '$0 build' or '$0 up'"
  exec "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

usage() {
  cat <<EOF
Usage: $0 COMMAND
  up           build if needed, start etcd + kube-apiserver + kube-controller-manager
  down         stop them and wipe the etcd data
  restart-apiserver [SECONDS]  stop kube-apiserver, wait, start it again (same data)
  status       show each process and /readyz (exit 0 only when ready)
  kubeconfig   print the path of the admin kubeconfig
  env          print 'export KUBECONFIG=...'
  build        only build the binaries into ${BIN_DIR}
  kubectl ARGS run the built kubectl against the control plane
EOF
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
  up) cmd_up ;;
  down) cmd_down ;;
  restart-apiserver) cmd_restart_apiserver "$@" ;;
  status) cmd_status ;;
  kubeconfig) echo "${KUBECONFIG_PATH}" ;;
  env) echo "export KUBECONFIG='${KUBECONFIG_PATH}'" ;;
  build) cmd_build ;;
  kubectl) cmd_kubectl "$@" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

# hack/node.sh sources this file for its process and certificate helpers.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
