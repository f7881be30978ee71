#!/usr/bin/env bash
# `npm run serve`: from a fresh clone to a running server on 127.0.0.1:7423 with the embedded
# SQLite store. Installs npm dependencies and builds when needed; as root on Debian it also
# installs runc and mmdebstrap and builds the default python image once, so the default provider
# (`auto`) gives real container isolation. Elsewhere the server falls back to the mock provider
# and says so loudly. Extra arguments go to `stacyvm serve` (e.g. --config stacyvm.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x node_modules/.bin/tsc ] || npm install --no-audit --no-fund  # honours package-lock.json; see .ci/run
npm run build --silent

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in runc mmdebstrap busybox-static iptables; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (container runtime for the oci provider)…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  node dist/cli/main.js image setup
fi

exec node dist/cli/main.js serve "$@"
