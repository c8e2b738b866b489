#!/usr/bin/env bash
# The demo on a fresh machine, as a cluster runs the operator: a local
# control plane with a real node (hack/node.sh), RabbitMQ, the product's
# image built here, the chart installed with Helm and lagoon-remote's
# values, the sample InsightsRemoteConfig from examples/, a Lagoon
# namespace with the two insights ConfigMaps a build makes, and a workload
# pod that posts a fact and a problem with its mounted token. Then what an
# admin looks at: `kubectl get irc`, the pods, the queue.
# Leaves everything running; `bash hack/demo.sh stop` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${INSIGHTS_DEMO_STATE:-$HOME/.cache/insights-remote/demo}
mkdir -p "$state"
KUBECONFIG=$(bash hack/control-plane.sh kubeconfig)
export KUBECONFIG
k() { bash hack/control-plane.sh kubectl "$@"; }
step() { printf '\n== %s\n' "$*"; }

if [ "${1:-}" = stop ]; then
  rm -f "$state/running"
  bash hack/node.sh down
  bash hack/control-plane.sh down
  exit 0
fi

start=$SECONDS
bash hack/deps.sh
helm=$(bash hack/helm.sh)
step "a node beside the control plane (hack/node.sh)"
bash hack/node.sh up
step "the product's image, built from this tree and imported into the node"
bash hack/node.sh product-image
eval "$(bash hack/node.sh env | sed 's/^/export /; s/=\(.*\)$/='"'"'\1'"'"'/')"

step "CRD and sample configuration (examples/insightsremoteconfig.yaml)"
k apply -f crds/insightsremoteconfig.yaml
k wait --for condition=established --timeout=60s crd/insightsremoteconfigs.insights.lagoon.sh
k create namespace lagoon --dry-run=client -o yaml | k apply -f -
# Pods of this namespace may run on the node (its taint keeps others off).
k annotate --overwrite namespace lagoon "scheduler.alpha.kubernetes.io/defaultTolerations=$INSIGHTS_NODE_TOLERATION"
# The example names the broker as seen from the host; the pod reaches it
# through the node's relay.
sed "s/address: 127.0.0.1:5672/address: $INSIGHTS_NODE_BROKER/" examples/insightsremoteconfig.yaml | k apply -f -

step "helm install, with lagoon-remote's values (charts/insights-remote/ci/lagoon-remote-values.yaml)"
# Scoped to the demo's namespace (WATCH_NAMESPACE), so the test suite can
# run beside it: the demo's operator never touches the tests' namespaces.
"$helm" upgrade --install lagoon-remote charts/insights-remote -n lagoon \
  -f charts/insights-remote/ci/lagoon-remote-values.yaml \
  --set image.repository=localhost/insights-remote,image.tag=dev \
  --set "global.rabbitMQHostname=$INSIGHTS_NODE_BROKER,global.rabbitMQUsername=guest,global.rabbitMQPassword=guest" \
  --set global.broker.tls.enabled=false,broker.tlsCA.enabled=false \
  --set "buildScannerImage=$INSIGHTS_NODE_SCANNER_IMAGE,buildScannerImagePullPolicy=IfNotPresent" \
  --set-json 'extraEnvs=[{"name":"WATCH_NAMESPACE","value":"demo-project-main"}]' \
  --wait --timeout 120s 2>&1 | grep -v "found symbolic link"

step "a Lagoon environment namespace and the build's insights ConfigMaps"
k apply -f tests/fixtures/namespace.json
k annotate --overwrite namespace demo-project-main "scheduler.alpha.kubernetes.io/defaultTolerations=$INSIGHTS_NODE_TOLERATION"
k apply -f tests/fixtures/configmap-sbom.json -f tests/fixtures/configmap-image.json

step "waiting for the token Secret and the forwards"
for _ in $(seq 1 120); do
  k -n demo-project-main get secret insights-token >/dev/null 2>&1 && break; sleep 0.5
done
for _ in $(seq 1 120); do
  n=$(k -n demo-project-main get cm -l lagoon.sh/insightsProcessed -o name | wc -l)
  [ "$n" -ge 2 ] && break; sleep 0.5
done
k -n demo-project-main get cm -L lagoon.sh/insightsType,lagoon.sh/insightsProcessed

step "a workload pod posts a fact and a problem with its mounted token, to the Service by name"
url="http://lagoon-remote-insights-remote.lagoon.svc" # cluster DNS (CoreDNS on the node)
k -n demo-project-main delete pod workload --ignore-not-found >/dev/null
k -n demo-project-main apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: workload}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
    - name: cli
      image: $INSIGHTS_NODE_TOOLS_IMAGE
      imagePullPolicy: Never
      command: [/usr/local/bin/post-insights]
      env: [{name: INSIGHTS_URL, value: "$url"}]
      volumeMounts:
        - {name: insights-token, mountPath: /var/run/secrets/lagoon/dynamic/insights-token, readOnly: true}
  volumes:
    - name: insights-token
      secret: {secretName: insights-token, optional: false}
YAML
phase=
for _ in $(seq 1 120); do
  phase=$(k -n demo-project-main get pod workload -o jsonpath='{.status.phase}')
  case "$phase" in Succeeded | Failed) break ;; esac
  sleep 0.5
done
k -n demo-project-main logs workload
[ "$phase" = Succeeded ] || { echo "the workload pod ended $phase"; exit 1; }

sleep 3 # let the status writer batch
step "kubectl get irc"
k get irc -A
step "kubectl -n lagoon get pods -o wide"
k -n lagoon get pods -o wide
step "messages waiting in lagoon-insights:items"
rabbitmqctl list_queues name messages 2>/dev/null | awk '$1=="lagoon-insights:items"{print $2}'
touch "$state/running"
echo
echo "demo ready in $((SECONDS - start))s; still running; stop everything with: bash hack/demo.sh stop"
