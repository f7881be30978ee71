#!/usr/bin/env bash
# `npm test`: the one test command, locally and in CI. Installs npm dependencies when missing,
# builds (integration suites run the built server), starts throwaway PostgreSQL and dockerd when
# this host can (root with the binaries present), runs every suite, and prints one summary line.
# Suites whose host feature is missing skip with a printed reason — except under CI=true,
# where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x node_modules/.bin/vitest ] || npm install --no-audit --no-fund  # honours package-lock.json; see .ci/run
npm run build --silent

if [ "$(id -u)" = 0 ]; then
  if [ -z "${STACYVM_TEST_SERVICES_DIR:-}" ]; then
    export STACYVM_TEST_SERVICES_DIR=$(mktemp -d /tmp/stacyvm-test-services.XXXXXX)
    trap 'scripts/test-services.sh stop; rm -rf "$STACYVM_TEST_SERVICES_DIR" 2>/dev/null || true' EXIT
  else
    trap 'scripts/test-services.sh stop' EXIT
  fi
  # Assigned first so that a service that fails to start stops the run (eval alone would
  # swallow the exit status).
  if [ -z "${STACYVM_TEST_PG_DSN:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exports=$(scripts/test-services.sh postgres); eval "$exports"
  fi
  if [ -z "${STACYVM_TEST_DOCKER_SOCKET:-}" ] && command -v dockerd >/dev/null; then
    exports=$(scripts/test-services.sh docker); eval "$exports"
  fi
fi

report=$(mktemp /tmp/stacyvm-vitest.XXXXXX.json)
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@" || status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  // A file that fails before its tests run (e.g. a missing service in CI) counts as a failure.
  const failedFiles = r.testResults.filter((f) => f.status === "failed" && f.assertionResults.length === 0).length;
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests + failedFiles} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' "$report" || true
rm -f "$report"
exit "$status"
