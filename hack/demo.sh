#!/usr/bin/env bash
# The demo on a fresh machine: a local control plane and RabbitMQ, the CRD
# and the sample InsightsRemoteConfig from examples/, the operator, a Lagoon
# namespace with the two insights ConfigMaps a build makes, a fact posted
# with the namespace's token, then `kubectl get irc` and the queue depth.
# Leaves everything running; `bash hack/demo.sh stop` stops the operator and
# the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${INSIGHTS_DEMO_STATE:-$HOME/.cache/insights-remote/demo}
mkdir -p "$state"

if [ "${1:-}" = stop ]; then
  [ -f "$state/operator.pid" ] && kill "$(cat "$state/operator.pid")" 2>/dev/null || true
  rm -f "$state/operator.pid"
  bash hack/control-plane.sh down
  exit 0
fi

bash hack/deps.sh
KUBECONFIG=$(bash hack/control-plane.sh kubeconfig)
export KUBECONFIG
k() { bash hack/control-plane.sh kubectl "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "building insights-remote"
cargo build --quiet
bin=target/debug/insights-remote

step "CRD and sample configuration (examples/insightsremoteconfig.yaml)"
k apply -f crds/insightsremoteconfig.yaml
k wait --for condition=established --timeout=60s crd/insightsremoteconfigs.insights.lagoon.sh
k create namespace lagoon --dry-run=client -o yaml | k apply -f -
k apply -f examples/insightsremoteconfig.yaml

step "starting the operator (log: $state/operator.log)"
if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  kill "$(cat "$state/operator.pid")"; sleep 1
fi
# Scoped to the demo's namespace (WATCH_NAMESPACE), so the test suite can
# run beside it: the demo's operator never touches the tests' namespaces.
POD_NAMESPACE=lagoon WEBSERVICE_PORT=8888 WATCH_NAMESPACE=demo-project-main \
  "$bin" --health-probe-bind-address 127.0.0.1:18081 --metrics-bind-address 127.0.0.1:18080 --metrics-secure=false \
  >"$state/operator.log" 2>&1 &
echo $! >"$state/operator.pid"
for _ in $(seq 1 60); do curl -fsS http://127.0.0.1:18081/readyz 2>/dev/null | grep -q '"broker":"connected"' && break; sleep 0.5; done
curl -fsS http://127.0.0.1:18081/readyz; echo

step "a Lagoon environment namespace and the build's insights ConfigMaps"
k apply -f tests/fixtures/namespace.json
k apply -f tests/fixtures/configmap-sbom.json -f tests/fixtures/configmap-image.json

step "waiting for the token Secret and the forwards"
for _ in $(seq 1 60); do
  k -n demo-project-main get secret insights-token >/dev/null 2>&1 && break; sleep 0.5
done
for _ in $(seq 1 60); do
  n=$(k -n demo-project-main get cm -l lagoon.sh/insightsProcessed -o name | wc -l)
  [ "$n" -ge 2 ] && break; sleep 0.5
done
k -n demo-project-main get cm -L lagoon.sh/insightsType,lagoon.sh/insightsProcessed

step "posting a fact with the token from the Secret"
token=$(k -n demo-project-main get secret insights-token -o jsonpath='{.data.INSIGHTS_TOKEN}' | base64 -d)
# Every replica learns of a new token Secret through a watch: retried for
# the moment it takes.
for i in $(seq 1 20); do
  curl -fsS -X POST http://127.0.0.1:8888/facts -H "Authorization: $token" -H 'Content-Type: application/json' \
    -d '[{"name":"drupal-version","value":"10.3.6","source":"demo","type":"SEMVER","service":"cli"}]' && break
  [ "$i" = 20 ] && exit 1
  sleep 0.5
done
echo

sleep 3 # let the status writer batch
step "kubectl get irc"
k get irc
step "messages waiting in lagoon-insights:items"
rabbitmqctl list_queues name messages 2>/dev/null | awk '$1=="lagoon-insights:items"{print $2}'
echo
echo "operator still running (pid $(cat "$state/operator.pid")); stop everything with: bash hack/demo.sh stop"
