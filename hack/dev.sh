#!/usr/bin/env bash
# hack/dev.sh (make dev): run rtmanager on this machine against a throwaway PostgreSQL and Redis,
# with the demo engine images built locally, as the runbook's "Testing Locally" describes.
#
# No manual step: a missing redis-server or PostgreSQL server is installed with apt-get (as root),
# PostgreSQL gets the role rtmanagerservice, database galaxy and schema rtmanager, Redis gets the
# password "local", the network galaxy-net is created when missing, galaxy/game:1.4.1 1.4.2 1.4.3
# (sick: its probe always fails) 1.5.0 2.0.0 are built from test/engine, and bin/rtmanager is
# built. The runbook's ports (5432, 6379, 8096) are used when free, free ones otherwise. The
# environment is written to /tmp/rtm-dev/env for other shells: `source /tmp/rtm-dev/env`.
#
# The first run builds the images and the binary and takes minutes; later runs reuse the caches.
# rtmanager listens on loopback only. PostgreSQL checks passwords (scram-sha-256; superuser
# postgres/postgres, service role rtmanagerservice/rtmanagerservice), so a wrong password fails as
# in production.
#
# rtmanager runs in the foreground. On Ctrl-C or exit the script stops it and removes only the
# engine containers this session made: labelled com.galaxy.owner=rtmanager, attached to $NET,
# created during the session and belonging to a game this session's rtmanager has in its database.
# Every other labelled container (another RTM's, another suite's, a hand-started one) is left and
# listed ("left running: ..."). Then Redis and PostgreSQL are stopped. The network, the images and
# the game state dirs are left in place. Output carries no terminal escapes unless stdout is a
# terminal.
#
# Knobs: RTM_DEV_DIR (default /tmp/rtm-dev), RTMANAGER_GAME_STATE_ROOT (default $RTM_DEV_DIR/games),
# RTMANAGER_DOCKER_NETWORK (default galaxy-net), RTMANAGER_LOG_FORMAT (default text here).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DEV=${RTM_DEV_DIR:-/tmp/rtm-dev}
STATE_ROOT=${RTMANAGER_GAME_STATE_ROOT:-$DEV/games}
NET=${RTMANAGER_DOCKER_NETWORK:-galaxy-net}
ENGINE_REPO=galaxy/game
ENGINE_VERSIONS=(1.4.1 1.4.2 1.4.3 1.5.0 2.0.0)
OWNER_LABEL=com.galaxy.owner=rtmanager

# Bold only on a terminal: a log file or a pipe gets plain text.
BOLD= RESET=
if [[ -t 1 && -z ${NO_COLOR:-} ]]; then BOLD=$'\033[1m' RESET=$'\033[0m'; fi
say() { printf '%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $(id -u) -eq 0 ]]; }

apt_install() {
  is_root || die "$* is missing and installing it needs root: apt-get install $*"
  say "installing $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

# port_busy PORT: true when something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port PREFERRED: the preferred port when free, else a free one from the ephemeral range.
pick_port() {
  local p=$1
  if ! port_busy "$p"; then echo "$p"; return; fi
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    port_busy "$p" || { echo "$p"; return; }
  done
  die "no free port found"
}

# as_pg CMD...: run a PostgreSQL binary as the postgres user when we are root (initdb refuses root).
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# --- prerequisites ------------------------------------------------------------------------------
command -v docker >/dev/null || die "the docker CLI is missing"
docker info >/dev/null 2>&1 || die "no Docker daemon answers on ${DOCKER_HOST:-unix:///var/run/docker.sock}"
command -v go >/dev/null || die "go is missing"
command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z $PGBIN || ! -x $PGBIN/initdb ]]; then
  apt_install postgresql-15 || apt_install postgresql
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
[[ -x $PGBIN/initdb ]] || die "no initdb under /usr/lib/postgresql/*/bin"
PSQL=$PGBIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql is missing"

mkdir -p "$DEV" "$STATE_ROOT"
chmod 755 "$DEV"

# --- leftovers of an earlier session that was killed without its cleanup -------------------------
if [[ -f $DEV/redis.pid ]]; then
  pid=$(cat "$DEV/redis.pid")
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] && kill "$pid" 2>/dev/null || true
  rm -f "$DEV/redis.pid"
fi
if [[ -f $DEV/pg/postmaster.pid ]]; then
  as_pg "$PGBIN/pg_ctl" -D "$DEV/pg" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$DEV/pg"

# --- clean-up on exit ---------------------------------------------------------------------------
RTM_PID=
PG_STARTED=
PRE_EXISTING=$(docker ps -aq --no-trunc --filter "label=$OWNER_LABEL" | sort)
cleanup() {
  set +e
  trap - EXIT INT TERM
  echo
  if [[ -n $RTM_PID ]] && kill -0 "$RTM_PID" 2>/dev/null; then
    say "stopping rtmanager (pid $RTM_PID)"
    kill -TERM "$RTM_PID" 2>/dev/null
    for _ in $(seq 400); do kill -0 "$RTM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RTM_PID" 2>/dev/null
    wait "$RTM_PID" 2>/dev/null
  fi
  remove_session_engines
  if [[ -f $DEV/redis.pid ]]; then
    say "stopping redis"
    kill "$(cat "$DEV/redis.pid")" 2>/dev/null
    rm -f "$DEV/redis.pid"
  fi
  if [[ -n $PG_STARTED ]]; then
    say "stopping postgres"
    as_pg "$PGBIN/pg_ctl" -D "$DEV/pg" -m fast -w stop >/dev/null 2>&1
  fi
  say "left in place: network $NET, images $ENGINE_REPO:*, state dirs under $STATE_ROOT"
}

# session_games: the game ids this session's rtmanager has a record or an operation of (nothing
# when PostgreSQL or the schema is not there yet).
session_games() {
  [[ -n $PG_STARTED && -n ${RTMANAGER_POSTGRES_PRIMARY_DSN:-} ]] || return 0
  "$PSQL" -X -q -At "$RTMANAGER_POSTGRES_PRIMARY_DSN" \
    -c "SELECT game_id FROM runtime_records UNION SELECT game_id FROM operation_log" 2>/dev/null || true
}

# remove_session_engines removes the engine containers this session made: labelled
# $OWNER_LABEL, attached to $NET, absent when the session began, and of a game in this session's
# database. Every other labelled container is left and listed.
remove_session_engines() {
  local games id game nets name state mine=() left=()
  games=$(session_games)
  while read -r id; do
    [[ -n $id ]] || continue
    IFS='|' read -r game nets name state < <(docker inspect -f \
      '{{index .Config.Labels "com.galaxy.game_id"}}|{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}|{{.Name}}|{{.State.Status}}' \
      "$id" 2>/dev/null) || continue
    if ! grep -qxF "$id" <<<"$PRE_EXISTING" && [[ " $nets " == *" $NET "* ]] \
      && [[ -n $game ]] && grep -qxF "$game" <<<"$games"; then
      mine+=("$id")
    else
      left+=("${name#/} ($state, game ${game:-?}, network ${nets% })")
    fi
  done < <(docker ps -aq --no-trunc --filter "label=$OWNER_LABEL")
  if ((${#mine[@]})); then
    say "removing ${#mine[@]} engine container(s) of this session"
    docker rm -f "${mine[@]}" >/dev/null
  fi
  if ((${#left[@]})); then
    say "left running: ${#left[@]} labelled container(s) this session did not make:"
    printf '    %s\n' "${left[@]}"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL ---------------------------------------------------------------------------------
PGPORT=$(pick_port 5432)
say "starting postgres ($PGBIN) on 127.0.0.1:$PGPORT"
mkdir -p "$DEV/pg"
is_root && chown postgres "$DEV/pg"
chmod 700 "$DEV/pg"
# Passwords are checked (scram-sha-256) on every connection, local ones included, as in production.
printf 'postgres\n' >"$DEV/pg-superuser.pw"
is_root && chown postgres "$DEV/pg-superuser.pw"
chmod 600 "$DEV/pg-superuser.pw"
as_pg "$PGBIN/initdb" -D "$DEV/pg" --auth=scram-sha-256 --pwfile="$DEV/pg-superuser.pw" -U postgres \
  -E UTF8 --no-locale >"$DEV/initdb.log" 2>&1 \
  || { tail -20 "$DEV/initdb.log"; die "initdb failed"; }
rm -f "$DEV/pg-superuser.pw"
# setsid: a Ctrl-C meant for rtmanager must not also reach the postmaster (it would shut down
# under rtmanager's graceful stop).
as_pg setsid -w "$PGBIN/pg_ctl" -D "$DEV/pg" -l "$DEV/pg/server.log" -w \
  -o "-p $PGPORT -k $DEV/pg -c listen_addresses=127.0.0.1" start >/dev/null \
  || { tail -20 "$DEV/pg/server.log"; die "postgres did not start"; }
PG_STARTED=1
pg_admin() { PGPASSWORD=postgres "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }
pg_admin -d postgres -c "CREATE ROLE rtmanagerservice LOGIN PASSWORD 'rtmanagerservice'" \
  -c "CREATE DATABASE galaxy"
pg_admin -d galaxy -c "CREATE SCHEMA rtmanager AUTHORIZATION rtmanagerservice"

# --- Redis --------------------------------------------------------------------------------------
RPORT=$(pick_port 6379)
say "starting redis on 127.0.0.1:$RPORT (password: local)"
redis-server --port "$RPORT" --bind 127.0.0.1 --requirepass local --save "" --appendonly no \
  --daemonize yes --pidfile "$DEV/redis.pid" --logfile "$DEV/redis.log" --dir "$DEV"
for _ in $(seq 50); do
  redis-cli -p "$RPORT" -a local --no-auth-warning PING 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -p "$RPORT" -a local --no-auth-warning PING >/dev/null || die "redis did not answer PING (see $DEV/redis.log)"

# --- Docker network and demo engines -------------------------------------------------------------
if ! docker network inspect "$NET" >/dev/null 2>&1; then
  say "creating docker network $NET"
  docker network create "$NET" >/dev/null
fi
say "building engine images and bin/rtmanager: the first build takes a few minutes (later runs reuse the caches)"
say "building engine images $ENGINE_REPO:{${ENGINE_VERSIONS[*]}} from test/engine"
go run ./hack/buildengine "$ENGINE_REPO" "${ENGINE_VERSIONS[@]}" | sed 's/^/    /'

# --- rtmanager ----------------------------------------------------------------------------------
VERSION=$(git describe --always --dirty 2>/dev/null || echo dev)
say "building bin/rtmanager ($VERSION)"
CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$VERSION" -o bin/rtmanager ./cmd/manager

HPORT=$(pick_port 8096)
# The DSN uses the libpq spelling of search_path (the contract accepts both): with the runbook's
# search_path=rtmanager form, the runbook's psql "$RTMANAGER_POSTGRES_PRIMARY_DSN" lines fail.
export RTMANAGER_GAME_STATE_ROOT=$STATE_ROOT
export RTMANAGER_DOCKER_NETWORK=$NET
# Loopback only: the dev API is for this machine (tokens are not set here).
export RTMANAGER_INTERNAL_HTTP_ADDR=127.0.0.1:$HPORT
export RTMANAGER_DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
export RTMANAGER_POSTGRES_PRIMARY_DSN="postgres://rtmanagerservice:rtmanagerservice@127.0.0.1:$PGPORT/galaxy?options=-csearch_path%3Drtmanager&sslmode=disable"
export RTMANAGER_REDIS_MASTER_ADDR=127.0.0.1:$RPORT
export RTMANAGER_REDIS_PASSWORD=local
export RTMANAGER_LOBBY_INTERNAL_BASE_URL=${RTMANAGER_LOBBY_INTERNAL_BASE_URL:-http://127.0.0.1:8095}
export RTMANAGER_LOG_FORMAT=${RTMANAGER_LOG_FORMAT:-text}
# redis-cli reads the password from REDISCLI_AUTH, so the runbook's redis-cli lines work as written.
export REDISCLI_AUTH=local
# rtmctl reads its server from RTMCTL_SERVER (and Redis from the variables above).
export RTMCTL_SERVER=http://127.0.0.1:$HPORT

{
  echo "# written by hack/dev.sh at $(date -u +%FT%TZ); valid while that session runs"
  for v in RTMANAGER_GAME_STATE_ROOT RTMANAGER_DOCKER_NETWORK RTMANAGER_INTERNAL_HTTP_ADDR \
    RTMANAGER_DOCKER_HOST RTMANAGER_POSTGRES_PRIMARY_DSN RTMANAGER_REDIS_MASTER_ADDR \
    RTMANAGER_REDIS_PASSWORD RTMANAGER_LOBBY_INTERNAL_BASE_URL RTMANAGER_LOG_FORMAT REDISCLI_AUTH RTMCTL_SERVER; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'export RTM_DEV_REDIS_PORT=%q RTM_DEV_PG_PORT=%q RTM_DEV_HTTP=%q\n' "$RPORT" "$PGPORT" "http://127.0.0.1:$HPORT"
} >"$DEV/env"

RCLI=redis-cli
[[ $RPORT == 6379 ]] || RCLI="redis-cli -p $RPORT"
cat <<EOF

$(say "rtmanager is starting; in another shell:")
  source $DEV/env
  curl http://127.0.0.1:$HPORT/healthz
  curl http://127.0.0.1:$HPORT/readyz
  $RCLI XADD runtime:start_jobs '*' game_id demo-1 image_ref $ENGINE_REPO:1.4.1 request_id req-1
  $RCLI XRANGE runtime:job_results - +
  curl -s http://127.0.0.1:$HPORT/api/v1/internal/runtimes/demo-1
  curl -s -X POST -H 'Content-Type: application/json' -H 'X-Galaxy-Caller: admin' \\
    http://127.0.0.1:$HPORT/api/v1/internal/runtimes/demo-1/patch -d '{"image_ref": "$ENGINE_REPO:1.4.2"}'
  psql "\$RTMANAGER_POSTGRES_PRIMARY_DSN" -c "SELECT status, COUNT(*) FROM rtmanager.runtime_records GROUP BY status"
  docker ps --filter label=$OWNER_LABEL --format 'table {{.ID}}\t{{.Names}}\t{{.Status}}\t{{.Labels}}'
  $RCLI XRANGE runtime:health_events - + COUNT 100
Ctrl-C stops rtmanager and cleans up.

EOF

bin/rtmanager &
RTM_PID=$!
set +e
wait "$RTM_PID"
rc=$?
RTM_PID=
set -e
exit "$rc"
