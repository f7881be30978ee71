#!/usr/bin/env bash
# The two-process walk-through of docs/remote-workers.md on loopback: a control plane whose own
# worker takes one sandbox, and one `stacyvm worker` process. The second spawn must land on the
# remote worker; exec, files, logs, extend and destroy must work through the control plane.
# Exits non-zero on the first failure. Needs a built dist/ (npm run build) and node; nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="$PWD/dist/cli/main.js"
[ -f "$CLI" ] || { echo "smoke: $CLI missing, run npm run build" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/stacyvm-smoke-remote-XXXXXX")
cp_pid=''
w_pid=''
cleanup() {
  local rc=$?
  [ -n "$w_pid" ] && kill -INT "$w_pid" 2>/dev/null && wait "$w_pid" 2>/dev/null || true
  [ -n "$cp_pid" ] && kill -TERM "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    echo "--- control plane log" >&2; tail -n 40 "$work/cp.log" >&2 || true
    echo "--- worker log" >&2; tail -n 40 "$work/worker.log" >&2 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
step() { echo "smoke: $*"; }
# field JSON PATH: prints one field of a JSON document (dot path), empty when absent.
field() { node -e 'let v=JSON.parse(process.argv[1]);for(const k of process.argv[2].split(".").filter(Boolean))v=v==null?undefined:v[k];process.stdout.write(v==null?"":typeof v==="object"?JSON.stringify(v):String(v))' "$1" "$2"; }
# api METHOD PATH [BODY]: prints the body; fails on a non-2xx status.
api() {
  local out status
  out=$(curl -sS --max-time 30 -X "$1" ${3:+-H 'content-type: application/json' --data "$3"} -w '\n%{http_code}' "$CP/api/v1$2") || fail "$1 $2: curl failed"
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  [ "${status:0:1}" = 2 ] || fail "$1 $2 → $status $out"
  printf '%s' "$out"
}
# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    for pid in $cp_pid $w_pid; do kill -0 "$pid" 2>/dev/null || fail "process $pid exited while waiting for $what"; done
    sleep 0.2
  done
}

token=$(node -e 'process.stdout.write(require("node:crypto").randomBytes(24).toString("hex"))')
printf '%s\n' "$token" > "$work/worker-token"
common_env=(STACYVM_PROVIDERS_DEFAULT=mock STACYVM_PROVIDERS_OCI_ENABLED=false STACYVM_PROVIDERS_DOCKER_ENABLED=false STACYVM_LOGGING_FORMAT=json STACYVM_LOGGING_LEVEL=info)

step "starting the control plane"
env -u STACYVM_CONFIG "${common_env[@]}" STACYVM_DATA_DIR="$work/cp" STACYVM_SERVER_PORT=0 \
  STACYVM_AUTH_WORKER_TOKENS="w1=$token" STACYVM_WORKER_MAX_SANDBOXES=1 \
  node "$CLI" serve >"$work/cp.log" 2>&1 &
cp_pid=$!
cp_url() { grep -o '"url":"http://[^"]*"' "$work/cp.log" | head -n1 | sed 's/"url":"\(.*\)"/\1/'; }
cp_listening() { [ -n "$(cp_url)" ]; }
wait_for 30 "the control plane to listen" cp_listening
CP=$(cp_url)
step "control plane at $CP"

step "starting worker w1"
env -u STACYVM_CONFIG "${common_env[@]}" STACYVM_DATA_DIR="$work/w1" \
  node "$CLI" worker --id w1 --control-plane "$CP" --listen 127.0.0.1:0 \
  --worker-token-file "$work/worker-token" --providers mock --heartbeat-interval 1s >"$work/worker.log" 2>&1 &
w_pid=$!
worker_online() { [ "$(field "$(api GET /workers/w1)" status)" = online ] && [ -n "$(field "$(api GET /workers/w1)" capacity.rpc_url)" ]; }
wait_for 30 "w1 to register" worker_online
step "w1 registered with rpc_url $(field "$(api GET /workers/w1)" capacity.rpc_url)"

step "spawning: the first sandbox fills the control plane's own worker, the second goes to w1"
local_sb=$(api POST /sandboxes '{"provider":"mock","ttl":"10m"}')
local_id=$(field "$local_sb" id)
[ "$(field "$local_sb" worker_id)" != w1 ] || fail "first sandbox went to w1: $local_sb"
remote_sb=$(api POST /sandboxes '{"provider":"mock","ttl":"10m"}')
id=$(field "$remote_sb" id)
[ "$(field "$remote_sb" worker_id)" = w1 ] || fail "second sandbox is not on w1: $remote_sb"
[ "$(field "$remote_sb" state)" = running ] || fail "remote sandbox is not running: $remote_sb"
[ "$(field "$(api GET "/sandboxes/$id")" state)" = running ] || fail "status of $id is not running"
step "sandbox $id runs on w1"

step "exec"
res=$(api POST "/sandboxes/$id/exec" '{"command":"echo hello-from-w1; echo oops >&2; exit 3"}')
[ "$(field "$res" stdout)" = hello-from-w1 ] || fail "exec stdout: $res"
[ "$(field "$res" stderr)" = oops ] || fail "exec stderr: $res"
[ "$(field "$res" exit_code)" = 3 ] || fail "exec exit code: $res"
stream=$(api POST "/sandboxes/$id/exec" '{"command":"echo one; echo two","stream":true}')
grep -q '"stream":"exit"' <<<"$stream" || fail "exec stream has no exit chunk: $stream"
grep -q 'one' <<<"$stream" || fail "exec stream lacks output: $stream"

step "files"
api POST "/sandboxes/$id/files" '{"path":"/tmp/smoke.txt","content":"remote file"}' >/dev/null
[ "$(api GET "/sandboxes/$id/files?path=/tmp/smoke.txt")" = 'remote file' ] || fail "file read back differs"
[ "$(field "$(api GET "/sandboxes/$id/files/stat?path=/tmp/smoke.txt")" size)" = 11 ] || fail "file stat size"
api POST "/sandboxes/$id/files/move" '{"old_path":"/tmp/smoke.txt","new_path":"/tmp/moved.txt"}' >/dev/null
listing=$(api GET "/sandboxes/$id/files/list?path=/tmp")
grep -q moved.txt <<<"$listing" || fail "moved file not listed: $listing"
api DELETE "/sandboxes/$id/files?path=/tmp/moved.txt" >/dev/null
listing=$(api GET "/sandboxes/$id/files/list?path=/tmp")
! grep -q moved.txt <<<"$listing" || fail "deleted file still listed: $listing"

step "logs and extend"
api GET "/sandboxes/$id/logs?lines=10" >/dev/null
api POST "/sandboxes/$id/extend" '{"ttl":"20m"}' >/dev/null

step "destroy"
[ "$(field "$(api DELETE "/sandboxes/$id")" status)" = destroyed ] || fail "destroy of $id"
[ "$(field "$(api GET "/sandboxes/$id")" state)" = destroyed ] || fail "$id is not destroyed"
api DELETE "/sandboxes/$local_id" >/dev/null

echo "smoke: OK"
