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

# A TLS listener on 127.0.0.1:5671 for tests/broker_tls.rs: a test CA, a
# server certificate for localhost/127.0.0.1 and a client certificate, made
# once with openssl (kept in $tls_dir; RabbitMQ reads its copies in
# /etc/rabbitmq/tls). Peers are verified when they present a certificate.
tls_dir=${XDG_CACHE_HOME:-$HOME/.cache}/insights-remote/tls
if [ ! -s "$tls_dir/client.pem" ]; then
  log "making test TLS certificates in $tls_dir"
  mkdir -p "$tls_dir"
  (
    cd "$tls_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=insights-remote test CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=guest" -keyout client.key -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.pem 2>/dev/null
    rm -f ./*.csr ./*.ext
  )
fi
conf=/etc/rabbitmq/rabbitmq.conf
# Loopback only: the node's pods reach the broker through hack/node.sh's relay.
tls_conf="listeners.tcp.default = 127.0.0.1:5672
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = /etc/rabbitmq/tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false"
restart_broker=0
if ! cmp -s "$tls_dir/server.pem" /etc/rabbitmq/tls/server.pem 2>/dev/null || ! grep -q "listeners.tcp.default = 127.0.0.1:5672" "$conf" 2>/dev/null; then
  mkdir -p /etc/rabbitmq/tls
  cp "$tls_dir/ca.pem" "$tls_dir/server.pem" "$tls_dir/server.key" /etc/rabbitmq/tls/
  chown -R rabbitmq:rabbitmq /etc/rabbitmq/tls 2>/dev/null || true
  chmod 0600 /etc/rabbitmq/tls/server.key
  { grep -v '^listeners.ssl\|^listeners.tcp\|^ssl_options' "$conf" 2>/dev/null || true; printf '%s\n' "$tls_conf"; } > "$conf.new"
  mv "$conf.new" "$conf"
  restart_broker=1
fi

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
tls_up() { (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null; }
# Debian's wrapper starts the node through `su rabbitmq`, whose soft limit of
# open files is 1024 here. With that many durable queues to recover after an
# unclean stop (a machine that was switched off with the broker running),
# the node then waits for file handles and never finishes booting (seen:
# 1,024 queues, 927 handles, still booting after 5 minutes). So the node is
# started as its user with the limit raised to the hard limit.
start_broker() {
  if [ "$(id -u)" = 0 ] && id -u rabbitmq >/dev/null 2>&1; then
    (cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c \
      'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached' \
      >/dev/null 2>&1) || true
  else
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
}
broker_log() {
  local f
  f=$(ls -t /var/log/rabbitmq/rabbit@*.log 2>/dev/null | grep -v _upgrade | head -1)
  [ -n "$f" ] && { log "last lines of $f:"; tail -n 25 "$f" | cut -c1-300 >&2; }
  log "open files allowed to the rabbitmq user: $(su rabbitmq -s /bin/sh -c 'ulimit -n' 2>/dev/null || echo '?')"
  df -h /var/lib/rabbitmq >&2 || true
}
# Waits up to $1 seconds for the node to finish booting.
await_broker() {
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    rabbitmqctl await_startup --timeout 10 >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
if [ "$restart_broker" = 1 ] && broker_up; then
  log "restarting RabbitMQ for its TLS listener"
  rabbitmqctl stop >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do broker_up || break; sleep 1; done
fi
if ! broker_up; then
  log "starting RabbitMQ"
  start_broker
fi
if ! await_broker 150; then
  # A node stopped with stop_app (the outage test) needs start_app.
  rabbitmqctl start_app >/dev/null 2>&1 || true
  await_broker 30 || { log "RabbitMQ did not finish booting"; broker_log; exit 1; }
fi
for _ in $(seq 1 60); do broker_up && break; sleep 1; done
broker_up || { log "RabbitMQ did not open 127.0.0.1:5672"; exit 1; }
for _ in $(seq 1 30); do tls_up && break; sleep 1; done
tls_up || { log "RabbitMQ did not open its TLS listener 127.0.0.1:5671 (see $conf)"; exit 1; }
log "RabbitMQ is up on 127.0.0.1:5672 and (TLS) 127.0.0.1:5671"
bash "$here/broker-clean.sh"

"$here/control-plane.sh" up
