#!/usr/bin/env bash
# Runs the two-process walk-through of docs/remote-workers.md exactly as written (control plane
# and `stacyvm worker` on loopback), then checks more against the same control plane: with its
# own slot taken, a spawn must land on the remote worker, and exec (buffered and streamed),
# files, logs, extend and destroy must work through the control plane.
# Exits non-zero on the first failure. Needs a built dist/ (npm run build), node and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="$PWD/dist/cli/main.js"
[ -f "$CLI" ] || { echo "smoke: $CLI missing, run npm run build" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/stacyvm-smoke-remote-XXXXXX")
w_pid=''
# Stops a process group: TERM (a worker drains on the first), TERM again after 1 s (a worker
# stops on the second), KILL if anything is left 10 s later.
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for i in $(seq 55); do
    kill -0 -- "-$1" 2>/dev/null || return 0
    [ "$i" = 5 ] && kill -TERM -- "-$1" 2>/dev/null
    sleep 0.2
  done
  echo "smoke: process group $1 ignored TERM; killing it" >&2
  kill -KILL -- "-$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  [ -n "$w_pid" ] && stop_group "$w_pid"
  if [ -f "$work/walk/background.pids" ]; then
    for pid in $(tac "$work/walk/background.pids"); do stop_group "$pid"; done
  fi
  if [ "$rc" -ne 0 ]; then
    for log in "$work"/walk/block*.log "$work/worker.log"; do
      [ -f "$log" ] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
    done
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
    [ -z "$w_pid" ] || kill -0 "$w_pid" 2>/dev/null || fail "the worker exited while waiting for $what"
    sleep 0.2
  done
}
free_port() { node -e 'const s=require("node:net").createServer().listen(0,"127.0.0.1",()=>{process.stdout.write(String(s.address().port));s.close()})'; }

# Part 1: the walk-through of docs/remote-workers.md, block by block as written, with `stacyvm`
# on PATH and its fixed ports moved to free ones. The processes see no STACYVM_* variables but
# the ones the walk-through sets.
mkdir -p "$work/bin" "$work/walk"
printf '#!/bin/sh\nexec node %q "$@"\n' "$CLI" > "$work/bin/stacyvm"
chmod +x "$work/bin/stacyvm"
cp_port=$(free_port)
rpc_port=$(free_port)
node scripts/doc-walkthrough.mjs docs/remote-workers.md "7423=$cp_port" "7424=$rpc_port" > "$work/walk.sh"
clean_env=()
for v in $(compgen -e | grep '^STACYVM_' || true); do clean_env+=(-u "$v"); done
step "running the walk-through of docs/remote-workers.md"
(cd "$work/walk" && env "${clean_env[@]}" PATH="$work/bin:$PATH" bash "$work/walk.sh") || fail "the walk-through failed"
CP="http://127.0.0.1:$cp_port"

# Part 2: deeper checks against the same control plane. The walk-through drained w1, so w1
# comes back as a new process (a restarted worker registers as online again).
step "restarting the drained worker w1"
old_worker=$(sed -n 2p "$work/walk/background.pids")
stop_group "$old_worker"
old_rpc=$(field "$(api GET /workers/w1)" capacity.rpc_url)
env "${clean_env[@]}" STACYVM_PROVIDERS_DEFAULT=mock STACYVM_PROVIDERS_OCI_ENABLED=false STACYVM_PROVIDERS_DOCKER_ENABLED=false \
  STACYVM_LOGGING_FORMAT=json STACYVM_LOGGING_LEVEL=info STACYVM_DATA_DIR="$work/w1-again" \
  setsid node "$CLI" worker --id w1 --control-plane "$CP" --listen 127.0.0.1:0 \
  --worker-token-file "$work/walk/w1.token" --providers mock --heartbeat-interval 1s >"$work/worker.log" 2>&1 &
w_pid=$!
worker_online() {
  local w
  w=$(api GET /workers/w1)
  [ "$(field "$w" status)" = online ] && [ -n "$(field "$w" capacity.rpc_url)" ] && [ "$(field "$w" capacity.rpc_url)" != "$old_rpc" ]
}
wait_for 30 "w1 to register again" worker_online
step "w1 registered again with rpc_url $(field "$(api GET /workers/w1)" capacity.rpc_url)"

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
