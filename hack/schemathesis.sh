#!/usr/bin/env bash
# OpenAPI-driven testing of the live ingestion API with schemathesis (PyPI):
# every operation in /openapi.json, generated valid and invalid inputs, with
# and without a valid token. Checks that no response is a 5xx (beyond 503
# while the broker is stopped, in the second run) and that responses match
# the document. Needs RabbitMQ (bash hack/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || pip install -q schemathesis
cargo build --quiet
KEY=schemathesis-signing-key-0123456789abcdef
port=${SCHEMATHESIS_PORT:-18899}
INSIGHTS_TOKEN_SECRET=$KEY ENABLE_CONFIGMAP_RECONCILER=false ENABLE_NAMESPACE_RECONCILER=false \
  target/debug/insights-remote --webservice-port "$port" --rabbitmq-hostname 127.0.0.1:5672 \
  --rabbitmq-exchange st-x --rabbitmq-queue st-q --rabbitmq-reconnect-retry-interval 1 \
  --rabbitmq-confirm-timeout 2s --health-probe-bind-address 127.0.0.1:0 --metrics-bind-address 127.0.0.1:0 \
  --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null || true; rabbitmqctl start_app >/dev/null 2>&1 || true; rabbitmqctl delete_queue st-q >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null | grep -q '"broker":"connected"' && break; sleep 0.1; done
token=$(INSIGHTS_TOKEN_SECRET=$KEY target/debug/insights-remote generate-token --namespace st --environment-id 42 --project-name st --environment-name main)
run() {
  schemathesis run "http://127.0.0.1:$port/openapi.json" --url "http://127.0.0.1:$port" \
    -H "Authorization: $token" --max-examples "${SCHEMATHESIS_EXAMPLES:-150}" \
    --generation-deterministic "$@"
}
echo "== broker up: no 5xx at all, responses conform to the document"
run --checks all --exclude-checks unsupported_method
echo "== broker stopped: only 503 (with Retry-After) as a 5xx"
rabbitmqctl stop_app >/dev/null
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=hack \
  run --checks no_5xx_but_503,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases fuzzing || status=$?
rabbitmqctl start_app >/dev/null
exit "${status:-0}"
