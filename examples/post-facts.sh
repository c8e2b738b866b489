#!/usr/bin/env bash
# A workload posting facts and problems with the token Lagoon mounts into
# its containers. Run it inside a Lagoon environment's container, or set
# INSIGHTS_TOKEN and INSIGHTS_URL yourself.
set -euo pipefail
token_file=/var/run/secrets/lagoon/dynamic/insights-token/INSIGHTS_TOKEN
TOKEN=${INSIGHTS_TOKEN:-$(cat "$token_file")}
URL=${INSIGHTS_URL:-http://lagoon-remote-insights-remote.lagoon.svc}

# Facts: name and value are required; type is TEXT (default), URL or SEMVER.
curl -fsS -X POST "$URL/facts" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '[{"name":"php-version","value":"8.3.13","source":"example-script","type":"SEMVER","category":"Programming language","service":"cli"}]'
echo

# Problems: severity is one of NONE UNKNOWN NEGLIGIBLE LOW MEDIUM HIGH CRITICAL.
curl -fsS -X POST "$URL/problems" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '[{"identifier":"CVE-2024-0001","associatedPackage":"openssl","version":"3.0.1","fixedVersion":"3.0.2","source":"example-script","service":"cli","severity":"HIGH","severityScore":7.5,"description":"example"}]'
echo

# Remove everything this source reported for the cli service:
# curl -fsS -X DELETE "$URL/facts/example-script/cli" -H "Authorization: Bearer $TOKEN"
