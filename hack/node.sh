#!/usr/bin/env bash
# A real Kubernetes node beside hack/control-plane.sh's control plane: Debian's
# containerd and runc, Debian's CNI plugins on a bridge this script creates,
# and kubelet, kube-proxy and kube-scheduler built from the same Kubernetes
# modules (hack/cp/go.mod). No registry is reachable, so every image the node
# runs is built here from local files (hack/image.py) and imported.
#
# Addresses: the bridge irbr0 holds 10.217.0.1/24, which is the node's IP;
# pods take 10.217.0.10-250 on it. Forwarding between the bridge and any other
# interface is dropped, and containerd's pulls go to a dead loopback proxy,
# so nothing on the node reaches past this machine. Two socat relays on the
# node IP carry pods' traffic to the API server (as the `kubernetes` Service's
# endpoint) and to RabbitMQ, which both listen on loopback only.
#
# The node is tainted insights-remote.test/node=:NoSchedule: the fast tests'
# pods, which those tests move through phases by hand, stay unscheduled. A
# namespace annotated with `scheduler.alpha.kubernetes.io/defaultTolerations`
# (see TOLERATION below; the API server runs PodTolerationRestriction) runs
# its pods here.
#
# Usage: hack/node.sh {up|down|status|product-image|build|env}
set -euo pipefail

NODE_SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "${NODE_SCRIPT_DIR}/.." && pwd)"
# shellcheck source=hack/control-plane.sh
source "${NODE_SCRIPT_DIR}/control-plane.sh"

NODE_NAME=insights-node
BRIDGE=irbr0
NODE_IP=10.217.0.1
POD_SUBNET=10.217.0.0/24
TAINT_KEY=insights-remote.test/node
TOLERATION='[{"key":"insights-remote.test/node","operator":"Exists","effect":"NoSchedule"}]'
BROKER_PORT="${INSIGHTS_NODE_BROKER_PORT:-5672}"
NODE_DIR="${STATE_DIR}/node"
CTR_SOCK="${NODE_DIR}/containerd/containerd.sock"
IMAGE_DIR="${CACHE_DIR}/images"
NODE_COMPONENTS=(containerd socat-apiserver socat-broker kube-scheduler coredns kubelet kube-proxy)
NODE_BINARIES=(kubelet kube-proxy kube-scheduler coredns)
COREDNS_VERSION=v1.15.0
PACKAGES=(containerd runc containernetworking-plugins iptables busybox-static conntrack socat musl-tools)
PRODUCT_IMAGE=localhost/insights-remote:dev
MUSL_TARGET=x86_64-unknown-linux-musl

log() { echo "node: $*" >&2; }

# ---------------------------------------------------------------- install

ensure_packages() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "ok installed" || missing+=("${p}")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's containerd package starts its own service on /run/containerd;
  # this node runs its own instance with its own state and socket.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
}

node_binaries_present() {
  local b
  for b in "${NODE_BINARIES[@]}"; do
    [[ -x "${BIN_DIR}/${b}" ]] || return 1
  done
}

cmd_node_build() {
  cmd_build
  node_binaries_present && return 0
  exec 8>"${CACHE_DIR}/build.lock"
  flock 8
  if node_binaries_present; then
    exec 8>&-
    return 0
  fi
  local go_bin tmp start
  go_bin="$(find_go)"
  log "building kubelet, kube-proxy and kube-scheduler ${K8S_VERSION} into ${BIN_DIR}"
  start=${SECONDS}
  tmp="$(mktemp -d "${CACHE_DIR}/.build.XXXXXX")"
  (
    cd "${CP_MOD_DIR}"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-p=${INSIGHTS_CP_BUILD_JOBS:-2} -trimpath -buildvcs=false -mod=readonly"
    "${go_bin}" build -ldflags="$(k8s_ldflags)" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler
  )
  # Cluster DNS: CoreDNS from the Go module proxy (its own module).
  (
    cd "${tmp}"
    CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN="${tmp}" GOFLAGS="-trimpath -buildvcs=false" \
      "${go_bin}" install -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
  )
  local b
  for b in "${NODE_BINARIES[@]}"; do
    mv -f "${tmp}/${b}" "${BIN_DIR}/${b}"
  done
  rm -rf "${tmp}"
  exec 8>&-
  log "built in $((SECONDS - start))s"
}

# ---------------------------------------------------------------- images

# The images every node test needs besides the product: the sandbox and the
# tools (busybox + kubectl). Rebuilt only when missing.
build_base_images() {
  mkdir -p "${IMAGE_DIR}"
  if [[ ! -s "${IMAGE_DIR}/pause.tar" ]]; then
    gcc -static -Os -s -o "${IMAGE_DIR}/pause" "${NODE_SCRIPT_DIR}/node/pause.c"
    python3 "${NODE_SCRIPT_DIR}/image.py" pause "${IMAGE_DIR}/pause" "${IMAGE_DIR}/pause.tar" >&2
  fi
  # The tools image carries hack/node's scripts: rebuilt when they change.
  local sum
  sum="$(cat "${NODE_SCRIPT_DIR}/image.py" "${NODE_SCRIPT_DIR}"/node/* | sha256sum | cut -c1-16)"
  if [[ ! -s "${IMAGE_DIR}/tools.tar" || "$(cat "${IMAGE_DIR}/tools.sum" 2>/dev/null)" != "${sum}" ]]; then
    KUBECTL="${BIN_DIR}/kubectl" python3 "${NODE_SCRIPT_DIR}/image.py" tools "${IMAGE_DIR}/tools.tar" >&2
    echo "${sum}" >"${IMAGE_DIR}/tools.sum"
  fi
}

ctr_() { ctr --address "${CTR_SOCK}" --namespace k8s.io "$@"; }

# import ARCHIVE NAME: imports the image and pins it (the kubelet never
# collects a pinned image; nothing could pull it back).
import_image() {
  ctr_ images import --no-unpack=false "$1" >/dev/null
  ctr_ images label "$2" io.cri-containerd.pinned=pinned >/dev/null
}

# The product's image from the working tree: a static musl release build
# (cached in target/), packed by hack/image.py and imported.
cmd_product_image() {
  running_pid containerd >/dev/null || die "the node is not running (hack/node.sh up)"
  rustup target list --installed 2>/dev/null | grep -qx "${MUSL_TARGET}" ||
    rustup target add "${MUSL_TARGET}" >&2
  (
    cd "${ROOT_DIR}"
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --quiet --release --locked \
      --target "${MUSL_TARGET}" -p insights-remote --bin insights-remote
  )
  mkdir -p "${IMAGE_DIR}"
  python3 "${NODE_SCRIPT_DIR}/image.py" insights-remote \
    "${ROOT_DIR}/target/${MUSL_TARGET}/release/insights-remote" "${IMAGE_DIR}/insights-remote.tar" >&2
  import_image "${IMAGE_DIR}/insights-remote.tar" "${PRODUCT_IMAGE}"
  log "imported ${PRODUCT_IMAGE}"
}

# ---------------------------------------------------------------- network

ensure_network() {
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
  fi
  ip addr replace "${NODE_IP}/24" dev "${BRIDGE}"
  ip link set "${BRIDGE}" up
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Pods talk to each other, to the node and through Services, never past
  # this machine: forwarding from or to the bridge across another interface
  # is dropped.
  local rule
  for rule in "-i ${BRIDGE} ! -o ${BRIDGE} -j DROP" "-o ${BRIDGE} ! -i ${BRIDGE} -j DROP"; do
    # shellcheck disable=SC2086 # the rule is a list of words
    iptables -C FORWARD ${rule} 2>/dev/null || iptables -I FORWARD ${rule}
  done
}

remove_network() {
  local rule
  for rule in "-i ${BRIDGE} ! -o ${BRIDGE} -j DROP" "-o ${BRIDGE} ! -i ${BRIDGE} -j DROP"; do
    # shellcheck disable=SC2086
    while iptables -D FORWARD ${rule} 2>/dev/null; do :; done
  done
  ip link del "${BRIDGE}" 2>/dev/null || true
}

# ---------------------------------------------------------------- config

node_kubeconfig() {
  local name="$1" subj="$2"
  if [[ ! -s "${PKI_DIR}/${name}.crt" ]] ||
    ! openssl verify -CAfile "${PKI_DIR}/ca.crt" "${PKI_DIR}/${name}.crt" >/dev/null 2>&1; then
    sign "${name}" "${subj}" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    chmod 600 "${PKI_DIR}/${name}.key"
  fi
  write_kubeconfig "${NODE_DIR}/${name}.kubeconfig" "${name}"
}

write_configs() {
  mkdir -p "${NODE_DIR}"/{containerd,cni/net.d,cni/ipam,kubelet,kubelet-certs} "${LOG_DIR}" "${RUN_DIR}"
  node_kubeconfig kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}"
  node_kubeconfig kube-proxy "/CN=system:kube-proxy"
  node_kubeconfig kube-scheduler "/CN=system:kube-scheduler"
  node_kubeconfig coredns "/CN=insights-node:coredns"

  # Cluster DNS on the node IP: cluster.local from the API server, every
  # other name NXDOMAIN (nothing is forwarded past this machine).
  cat >"${NODE_DIR}/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind ${NODE_IP}
    errors
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa {
        kubeconfig ${NODE_DIR}/coredns.kubeconfig insights-remote
    }
}
.:53 {
    bind ${NODE_IP}
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF

  cat >"${NODE_DIR}/containerd/config.toml" <<EOF
version = 2
root = "${NODE_DIR}/containerd/root"
state = "${NODE_DIR}/containerd/state"
[grpc]
  address = "${CTR_SOCK}"
[ttrpc]
  address = "${CTR_SOCK}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/insights-remote/pause:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine withholds CAP_SYS_RESOURCE even from root, so no process
  # may lower its oom_score_adj (the kubelet asks -998 for sandboxes): keep
  # containers at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_DIR}/cni/net.d"
EOF

  cat >"${NODE_DIR}/cni/net.d/10-insights-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "insights-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_DIR}/cni/ipam",
        "ranges": [[{ "subnet": "${POD_SUBNET}", "rangeStart": "10.217.0.10", "rangeEnd": "10.217.0.250", "gateway": "${NODE_IP}" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

  # Pods resolve nothing outside the cluster: no search domains or servers
  # of this machine's.
  printf 'nameserver %s\n' "${NODE_IP}" >"${NODE_DIR}/resolv.conf"

  cat >"${NODE_DIR}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: ${PKI_DIR}/ca.crt }
authorization: { mode: Webhook }
cgroupDriver: cgroupfs
# This machine mounts cgroup v1 hierarchies; 1.35 refuses them unless told.
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://${CTR_SOCK}
clusterDomain: cluster.local
clusterDNS: ["${NODE_IP}"]
resolvConf: ${NODE_DIR}/resolv.conf
registerWithTaints:
  - { key: ${TAINT_KEY}, effect: NoSchedule }
# Imported images are pinned; the disk may be fuller than a real node's.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1% }
serializeImagePulls: false
maxPods: 60
EOF

  cat >"${NODE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: ${NODE_DIR}/kube-proxy.kubeconfig }
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${POD_SUBNET}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["${NODE_IP}/32"]
conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
EOF
}

# The API server answers pods at the `kubernetes` Service (10.96.0.1:443):
# its endpoint is the relay on the node IP. --endpoint-reconciler-type=none
# leaves the Service without one, so this writes it.
publish_apiserver_endpoint() {
  "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-node-relay
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: insights-remote-node
addressType: IPv4
endpoints:
  - addresses: ["${NODE_IP}"]
    conditions: { ready: true }
ports:
  - { name: https, port: ${API_PORT}, protocol: TCP }
EOF
}

# ---------------------------------------------------------------- health

containerd_ready() { ctr --address "${CTR_SOCK}" version >/dev/null 2>&1; }
relay_ready() { (exec 3<>"/dev/tcp/${NODE_IP}/$1") 2>/dev/null; }
apiserver_relay_ready() { relay_ready "${API_PORT}"; }
broker_relay_ready() { relay_ready "${BROKER_PORT}"; }
scheduler_healthy() { [[ "$(curl -ksS --max-time 2 https://127.0.0.1:10359/healthz 2>/dev/null || true)" == "ok" ]]; }
kubelet_healthy() { [[ "$(curl -sS --max-time 2 http://127.0.0.1:10248/healthz 2>/dev/null || true)" == "ok" ]]; }
coredns_ready() { curl -fsS --max-time 2 http://127.0.0.1:18181/ready >/dev/null 2>&1; }
proxy_healthy() { curl -sS --max-time 2 http://127.0.0.1:10256/healthz >/dev/null 2>&1; }
node_ready() {
  [[ "$("${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" get node "${NODE_NAME}" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)" == "True" ]]
}

# Overrides control-plane.sh's: a node that fails to start leaves the
# control plane running.
fail_up() {
  local c
  log "error: $*"
  for c in "${NODE_COMPONENTS[@]}"; do
    if [[ -s "${LOG_DIR}/${c}.log" ]]; then
      echo "----- last 40 lines of ${LOG_DIR}/${c}.log -----" >&2
      tail -n 40 "${LOG_DIR}/${c}.log" >&2
    fi
  done
  stop_node
  exit 1
}

# ---------------------------------------------------------------- commands

link_system_binary() {
  ln -sfn "$2" "${BIN_DIR}/$1"
}

stop_node() {
  stop_group kube-proxy kubelet kube-scheduler
  # Containers outlive the kubelet: their shims are stopped before containerd.
  if running_pid containerd >/dev/null; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null || true); do
      ctr_ tasks kill -s KILL "${id}" >/dev/null 2>&1 || true
    done
  fi
  pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io -id [0-9a-f]+ -address ${CTR_SOCK}" 2>/dev/null || true
  stop_group containerd socat-broker socat-apiserver
  # Mounts the kubelet and containerd leave behind (volumes, rootfs, shm).
  local m
  for m in $(awk -v d="${NODE_DIR}/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "${m}" 2>/dev/null || true
  done
  rm -rf "${NODE_DIR}/cni/ipam" "${NODE_DIR}/kubelet/pods"
}

cmd_node_up() {
  ensure_packages
  bash "${NODE_SCRIPT_DIR}/control-plane.sh" up
  cmd_node_build
  lock_state
  local c n=0
  for c in "${NODE_COMPONENTS[@]}"; do
    if running_pid "${c}" >/dev/null; then n=$((n + 1)); fi
  done
  if ((n == ${#NODE_COMPONENTS[@]})) && node_ready; then
    log "already running: node ${NODE_NAME} at ${NODE_IP}"
    return 0
  fi
  ((n == 0)) || log "the node is partly running; restarting it"
  stop_node
  local start_t=${SECONDS}
  link_system_binary containerd "$(command -v containerd)"
  link_system_binary socat-apiserver "$(command -v socat)"
  link_system_binary socat-broker "$(command -v socat)"
  ensure_network
  write_configs

  # containerd's pulls meet a closed loopback port: no registry is ever
  # asked (every image is imported).
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    start containerd --config "${NODE_DIR}/containerd/config.toml"
  wait_for containerd containerd_ready
  build_base_images
  import_image "${IMAGE_DIR}/pause.tar" localhost/insights-remote/pause:1
  import_image "${IMAGE_DIR}/tools.tar" localhost/insights-remote/tools:1
  import_image "${IMAGE_DIR}/scanner.tar" localhost/insights-remote/scanner:1

  start socat-apiserver "TCP-LISTEN:${API_PORT},bind=${NODE_IP},fork,reuseaddr" "TCP:127.0.0.1:${API_PORT}"
  wait_for socat-apiserver apiserver_relay_ready
  start socat-broker "TCP-LISTEN:${BROKER_PORT},bind=${NODE_IP},fork,reuseaddr" "TCP:127.0.0.1:${BROKER_PORT}"
  wait_for socat-broker broker_relay_ready
  publish_apiserver_endpoint

  start kube-scheduler \
    --kubeconfig="${NODE_DIR}/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="${NODE_DIR}/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="${NODE_DIR}/kube-scheduler.kubeconfig" \
    --authentication-skip-lookup=true \
    --bind-address=127.0.0.1 --secure-port=10359 \
    --cert-dir="${NODE_DIR}/scheduler-certs" \
    --leader-elect=false --profiling=false --v=1
  wait_for kube-scheduler scheduler_healthy

  # What CoreDNS reads, and nothing more.
  "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "insights-node:coredns" }
rules:
  - { apiGroups: [""], resources: [services, namespaces], verbs: [list, watch] }
  - { apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "insights-node:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "insights-node:coredns" }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: User, name: "insights-node:coredns" }]
EOF
  start coredns -conf "${NODE_DIR}/Corefile"
  wait_for coredns coredns_ready

  start kubelet \
    --config="${NODE_DIR}/kubelet.yaml" \
    --kubeconfig="${NODE_DIR}/kubelet.kubeconfig" \
    --root-dir="${NODE_DIR}/kubelet" \
    --cert-dir="${NODE_DIR}/kubelet-certs" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --v=1
  wait_for kubelet kubelet_healthy

  start kube-proxy --config="${NODE_DIR}/kube-proxy.yaml" --v=1
  wait_for kube-proxy proxy_healthy
  wait_for kubelet node_ready
  log "ready in $((SECONDS - start_t))s: node ${NODE_NAME} at ${NODE_IP}"
}

cmd_node_down() {
  lock_state
  stop_node
  remove_network
  if apiserver_ready; then
    "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" delete node "${NODE_NAME}" \
      --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  log "stopped"
}

cmd_node_status() {
  local all=0
  print_processes "${NODE_COMPONENTS[@]}" || all=1
  if node_ready; then
    printf '%-24s Ready (%s)\n' "node ${NODE_NAME}" "${NODE_IP}"
  else
    printf '%-24s not ready\n' "node ${NODE_NAME}"
    all=1
  fi
  return "${all}"
}

# What the node's tests read: addresses, names and the toleration.
cmd_node_env() {
  cat <<EOF
INSIGHTS_NODE_NAME=${NODE_NAME}
INSIGHTS_NODE_IP=${NODE_IP}
INSIGHTS_NODE_BROKER=${NODE_IP}:${BROKER_PORT}
INSIGHTS_NODE_TOLERATION=${TOLERATION}
INSIGHTS_NODE_PRODUCT_IMAGE=${PRODUCT_IMAGE}
INSIGHTS_NODE_TOOLS_IMAGE=localhost/insights-remote/tools:1
INSIGHTS_NODE_SCANNER_IMAGE=localhost/insights-remote/scanner:1
INSIGHTS_NODE_IMAGES=${IMAGE_DIR}
INSIGHTS_NODE_LOGS=${LOG_DIR}
EOF
}

node_main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
  up) cmd_node_up ;;
  down) cmd_node_down ;;
  status) cmd_node_status ;;
  build) cmd_node_build ;;
  product-image) cmd_product_image ;;
  env) cmd_node_env ;;
  *)
    echo "Usage: $0 {up|down|status|build|product-image|env}" >&2
    exit 2
    ;;
  esac
}

node_main "$@"
