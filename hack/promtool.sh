#!/usr/bin/env bash
# Builds promtool and hack/promql (the metric names each PromQL expression
# selects) from the Prometheus module pinned in hack/promql/go.mod, from the
# Go module proxy, cached outside git; prints the directory holding both.
# Idempotent.
set -euo pipefail
dir="$(cd "$(dirname "$0")/promql" && pwd)"
version=$(awk '$1 == "github.com/prometheus/prometheus" { print $2; exit }' "${dir}/go.mod")
sum=$(cat "${dir}/main.go" "${dir}/go.mod" | sha256sum | cut -c1-12)
cache="${INSIGHTS_PROMTOOL_CACHE:-${HOME}/.cache/insights-remote/promtool-${version}-${sum}}"
if [ ! -x "${cache}/promtool" ] || [ ! -x "${cache}/promql-names" ]; then
  go_bin=$(command -v go || echo /usr/local/go/bin/go)
  mkdir -p "${cache}"
  start=${SECONDS}
  echo "promtool: building promtool ${version} and promql-names (once)" >&2
  (
    cd "${dir}"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
    "${go_bin}" build -ldflags "-s -w" -o "${cache}/promql-names" .
    "${go_bin}" build -ldflags "-s -w" -o "${cache}/promtool" github.com/prometheus/prometheus/cmd/promtool
  )
  echo "promtool: built in $((SECONDS - start))s" >&2
fi
echo "${cache}"
