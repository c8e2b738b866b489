#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts RabbitMQ and
# the local control plane, checks formatting and lints, runs every test, and
# stops the control plane again whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh
# Lagoon core's consumer (insights-handler) and the API stand-in's library,
# for tests/consumer.rs; built once and cached outside git.
bash hack/lagoon-core.sh >/dev/null
# A real Dependency-Track API server for tests/dependency_track.rs (built
# from ../shared/dependency-track with Maven Central, cached outside git;
# started on loopback, or reused when already running).
bash ../shared/dependency-track/run.sh >/dev/null
# Helm, built from the Go module proxy once, for tests/chart.rs.
bash hack/helm.sh >/dev/null
# A real node (kubelet, containerd, kube-proxy, kube-scheduler) beside the
# control plane, and the product's image built from this tree and imported
# into it, for tests/node.rs and tests/image.rs (hack/node.sh).
bash hack/node.sh up
bash hack/node.sh product-image
# promtool and the PromQL name lister, for tests/monitoring.rs.
bash hack/promtool.sh >/dev/null
# A running demo (bash hack/demo.sh) shares the control plane and RabbitMQ
# but nothing else: its operator watches only its own namespace, and the
# tests use their own namespaces, exchanges and queues. Then the control
# plane stays up at the end, so the demo keeps running.
demo_on=${INSIGHTS_DEMO_STATE:-$HOME/.cache/insights-remote/demo}/running
keep_control_plane=
if [ -f "$demo_on" ]; then
  keep_control_plane=1
  echo "test.sh: the demo is running; the tests run beside it and leave the control plane and the node up"
fi
stop_all() {
  bash hack/broker-clean.sh >/dev/null 2>&1 || true
  if [ -z "$keep_control_plane" ]; then
    bash hack/node.sh down >/dev/null 2>&1 || true
    bash hack/control-plane.sh down >/dev/null 2>&1 || true
  fi
  bash ../shared/dependency-track/stop.sh >/dev/null 2>&1 || true
}
trap stop_all EXIT
KUBECONFIG=$(bash hack/control-plane.sh kubeconfig)
export KUBECONFIG
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --all-targets -- --test-threads "${TEST_THREADS:-4}"
# The live API against its OpenAPI document (stops and restarts RabbitMQ, so
# it runs after the Rust tests). SCHEMATHESIS=0 skips it.
if [ "${SCHEMATHESIS:-1}" != 0 ]; then
  bash hack/schemathesis.sh
fi
