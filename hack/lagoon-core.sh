#!/usr/bin/env bash
# Lagoon core's real consumer for the end-to-end tests: builds insights-handler
# from ../shared/lagoon-core (Go module proxy only; cached outside git) and
# installs graphql-core (PyPI) for the Lagoon API stand-in (hack/lagoon_api.py).
# Prints the handler's directory (binary `insights-handler-bin` and the
# source tree it must run in). Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src_tar=${LAGOON_CORE_TAR:-$here/../../shared/lagoon-core/insights-handler-7f7cc48-src.tar.gz}
cache=${INSIGHTS_LAGOON_CORE_CACHE:-$HOME/.cache/insights-remote/lagoon-core}
log() { printf 'lagoon-core: %s\n' "$*" >&2; }

python3 -c 'import graphql' 2>/dev/null || {
  log "installing graphql-core"
  pip install -q 'graphql-core>=3.2,<3.3' >&2
}

stamp="$cache/.built-$(sha256sum "$src_tar" | cut -c1-16)"
if [ ! -x "$cache/insights-handler-bin" ] || [ ! -f "$stamp" ]; then
  [ -f "$src_tar" ] || { log "missing $src_tar"; exit 1; }
  go=$(command -v go || echo /usr/local/go/bin/go)
  rm -rf "$cache" && mkdir -p "$cache"
  tar -xzf "$src_tar" -C "$cache"
  log "building insights-handler (first time only)"
  (cd "$cache/insights-handler" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" \
    "$go" build -o "$cache/insights-handler-bin" . >&2)
  touch "$stamp"
fi
echo "$cache"
