#!/usr/bin/env bash
# Installs and starts what the tests and the demo need, idempotently:
# Debian packages (RabbitMQ, OpenSSL headers), a running RabbitMQ on
# 127.0.0.1:5672 (guest/guest), and the local control plane
# (hack/control-plane.sh up, which builds it from Go modules the first time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

log() { printf 'deps: %s\n' "$*" >&2; }

need_pkgs=()
command -v rabbitmq-server >/dev/null 2>&1 || need_pkgs+=(rabbitmq-server)
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v flock >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { log "cargo is required (rustup)"; exit 1; }
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || { log "Go is required to build the control plane"; exit 1; }

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! broker_up; then
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi
rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || {
  # A node stopped with stop_app (the outage test) needs start_app.
  rabbitmqctl start_app >/dev/null 2>&1 || true
  rabbitmqctl await_startup --timeout 60 >/dev/null
}
for _ in $(seq 1 60); do broker_up && break; sleep 1; done
broker_up || { log "RabbitMQ did not open 127.0.0.1:5672"; exit 1; }
log "RabbitMQ is up on 127.0.0.1:5672"

"$here/control-plane.sh" up
