#!/usr/bin/env bash
# Builds Helm (pinned below) from the Go module proxy, like the control
# plane, cached outside git; prints the binary's path. Idempotent.
set -euo pipefail
HELM_VERSION=v3.22.0
cache="${INSIGHTS_HELM_CACHE:-${HOME}/.cache/insights-remote/helm-${HELM_VERSION}}"
if [ ! -x "${cache}/helm" ]; then
  go_bin=$(command -v go || echo /usr/local/go/bin/go)
  mkdir -p "${cache}"
  start=${SECONDS}
  echo "helm: building ${HELM_VERSION} from the Go module proxy (once)" >&2
  (
    cd "$(mktemp -d)"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" GOBIN="${cache}"
    "${go_bin}" install \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
      "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  )
  echo "helm: built in $((SECONDS - start))s" >&2
fi
echo "${cache}/helm"
