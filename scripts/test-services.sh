#!/usr/bin/env bash
# Starts the throwaway services the integration suites need and prints `export` lines for
# them: a PostgreSQL cluster on 127.0.0.1 (temp dir, free port) and a private dockerd.
# Usage: eval "$(scripts/test-services.sh start)"; scripts/test-services.sh stop
set -euo pipefail
state=${STACYVM_TEST_SERVICES_DIR:-/tmp/stacyvm-test-services}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -x "$bindir/initdb" ] || { echo "postgres server binaries not found" >&2; return 1; }
  local dir="$state/pg" port
  port=$(free_port)
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
  su postgres -s /bin/sh -c "$bindir/initdb -D $dir/data -U postgres --auth=trust -E UTF8 >$dir/initdb.log 2>&1"
  su postgres -s /bin/sh -c "$bindir/pg_ctl -D $dir/data -l $dir/server.log -w -o '-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=200 -c fsync=off' start >/dev/null"
  echo "export STACYVM_TEST_PG_DSN=postgres://postgres@127.0.0.1:$port/postgres"
  echo "$bindir" > "$state/pg.bindir"
}

start_dockerd() {
  command -v dockerd >/dev/null || { echo "dockerd not installed" >&2; return 1; }
  local dir="$state/docker"
  mkdir -p "$dir"
  local sock="$dir/docker.sock"
  if ! [ -S "$sock" ] || ! DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1; then
    nohup dockerd --iptables=false --bridge=none --host "unix://$sock" --data-root "$dir/data" \
      --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
      DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1 && break
      sleep 0.5
    done
    DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1 || { echo "dockerd did not start; see $dir/dockerd.log" >&2; return 1; }
  fi
  echo "export STACYVM_TEST_DOCKER_SOCKET=$sock"
}

stop_all() {
  if [ -f "$state/pg.bindir" ] && [ -d "$state/pg/data" ]; then
    su postgres -s /bin/sh -c "$(cat "$state/pg.bindir")/pg_ctl -D $state/pg/data -m immediate stop" >/dev/null 2>&1 || true
  fi
  if [ -f "$state/docker/dockerd.pid" ]; then
    local pid
    pid=$(cat "$state/docker/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    # dockerd unmounts its layers on the way out; wait so the directory can be removed.
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
}

mkdir -p "$state"
# The postgres user must be able to reach its cluster directory below this one.
chmod 755 "$state"
case "${1:-start}" in
  start) start_postgres; start_dockerd ;;
  postgres) start_postgres ;;
  docker) start_dockerd ;;
  stop) stop_all ;;
  *) echo "usage: $0 start|postgres|docker|stop" >&2; exit 2 ;;
esac
