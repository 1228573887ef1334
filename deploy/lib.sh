# shellcheck shell=bash
# Shared code for deploy/up, deploy/down and deploy/status. Sourced, not run.
#
# Everything lives under $PRM_HOME (default: <repo>/.prm):
#   postgres/        PostgreSQL 15 data directory (owned by the postgres user)
#   kafka/lib/       broker jars fetched from Maven Central
#   kafka/data/      KRaft metadata + topic logs
#   kafka/server.properties   rendered from deploy/kafka/server.properties.template
#   run/             pid file, PostgreSQL unix socket, lock
#   logs/            postgres.log, kafka.log, kafka.out, mvn.log, ...

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$DEPLOY_DIR")"

PRM_HOME="${PRM_HOME:-$REPO_DIR/.prm}"
case "$PRM_HOME" in /*) ;; *) PRM_HOME="$PWD/$PRM_HOME" ;; esac
PRM_HOME="${PRM_HOME%/}"
export PRM_HOME

RUN_DIR="$PRM_HOME/run"
LOG_DIR="$PRM_HOME/logs"
PYTHON="${PRM_PYTHON:-python3}"

# --- PostgreSQL ---------------------------------------------------------------
PG_BIN="${PRM_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${PRM_PG_PORT:-54329}"
PG_DATA="$PRM_HOME/postgres"
PG_SOCKET_DIR="$RUN_DIR/postgres"
PG_LOG="$LOG_DIR/postgres.log"
PG_READY_TIMEOUT="${PRM_PG_READY_TIMEOUT:-60}"

# --- Kafka --------------------------------------------------------------------
KAFKA_VERSION="4.1.1"
KAFKA_PORT="${PRM_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${PRM_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_NODE_ID=1
KAFKA_HEAP="${PRM_KAFKA_HEAP:-1g}"
KAFKA_READY_TIMEOUT="${PRM_KAFKA_READY_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${PRM_KAFKA_STOP_TIMEOUT:-60}"
KAFKA_DIR="$PRM_HOME/kafka"
KAFKA_LIB="$KAFKA_DIR/lib"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_CONFIG="$KAFKA_DIR/server.properties"
KAFKA_FORMATTED="$KAFKA_DIR/formatted.env"
KAFKA_PID_FILE="$RUN_DIR/kafka.pid"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_OUT="$LOG_DIR/kafka.out"
KAFKA_POM="$DEPLOY_DIR/kafka/pom.xml"
KAFKA_LOG4J="$DEPLOY_DIR/kafka/log4j2.xml"
KAFKA_TEMPLATE="$DEPLOY_DIR/kafka/server.properties.template"
KAFKA_LIB_STAMP="$KAFKA_LIB/.prm-lib-complete"

for _port in "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
  [[ "$_port" =~ ^[0-9]+$ ]] || { echo "error: port '$_port' is not a number" >&2; exit 2; }
done
unset _port

# --- helpers ------------------------------------------------------------------
say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# Print the last lines of a log file to stderr, indented. With a byte offset
# as $3, only what was written after that offset (this run's lines).
show_tail() {
  local file="$1" lines="${2:-30}" from="${3:-0}"
  [[ -s "$file" ]] || return 0
  local size
  size="$(stat -c %s "$file")"
  ((size > from)) || return 0
  printf -- '--- last lines of %s ---\n' "$file" >&2
  tail -c "+$((from + 1))" "$file" | tail -n "$lines" | sed 's/^/  /' >&2
}

file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# Components named on the command line; default "all".
parse_components() {
  local arg
  COMPONENTS=()
  [[ $# -gt 0 ]] || set -- all
  for arg in "$@"; do
    case "$arg" in
      all) COMPONENTS+=(postgres kafka) ;;
      postgres|pg|postgresql) COMPONENTS+=(postgres) ;;
      kafka) COMPONENTS+=(kafka) ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  # de-duplicate, keep the order postgres, kafka
  local c out=()
  for c in postgres kafka; do
    [[ " ${COMPONENTS[*]} " == *" $c "* ]] && out+=("$c")
  done
  COMPONENTS=("${out[@]}")
}

# One deploy/up or deploy/down at a time per $PRM_HOME.
take_lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  if ! flock -n 9; then
    say "waiting for another deploy/up or deploy/down on $PRM_HOME ..."
    flock -w 900 9 || die "could not take $RUN_DIR/.lock"
  fi
}

# Create the base layout. A .gitignore inside makes git ignore the whole dir.
ensure_home() {
  mkdir -p "$PRM_HOME" "$RUN_DIR" "$LOG_DIR"
  chmod 755 "$PRM_HOME" "$RUN_DIR" "$LOG_DIR"
  [[ -f "$PRM_HOME/.gitignore" ]] || printf '# runtime data of deploy/up\n*\n' >"$PRM_HOME/.gitignore"
}

# Is something already listening on 127.0.0.1:$1?
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if the process exists and is not a zombie.
pid_alive() {
  local pid="$1" state
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  state="$(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ "$state" != Z && "$state" != X ]]
}

# apt-get install, as root only.
apt_install() {
  [[ $EUID -eq 0 ]] || die "missing packages ($*): run as root, or: sudo apt-get install -y $*"
  command -v apt-get >/dev/null || die "missing packages ($*) and no apt-get to install them"
  local log="$LOG_DIR/apt.log"
  say "installing with apt-get: $* (log: $log)"
  local log_from
  log_from="$(file_size "$log")"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update && apt-get install -y --no-install-recommends "$@"; } >>"$log" 2>&1 9>&-; then
    show_tail "$log" 20 "$log_from"
    die "apt-get install $* failed"
  fi
}

# ==============================================================================
# PostgreSQL
# ==============================================================================
PG_USER=postgres
[[ $EUID -eq 0 ]] || PG_USER="$(id -un)"

# Run a command as the OS user that owns the cluster (postgres when we are root).
# cd / first: postgres cannot enter root's home and would warn about it.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

pg_installed() { [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]]; }

pg_ensure_installed() {
  pg_installed && return 0
  say "postgres: $PG_BIN/initdb not found, installing PostgreSQL 15"
  # Debian 12's "postgresql" is PostgreSQL 15. (It also creates the Debian
  # default cluster "main"; we do not use it.)
  apt_install postgresql
  pg_installed || die "PostgreSQL installed, but $PG_BIN/initdb is still missing (not Debian 12?); set PRM_PG_BIN"
}

# The postgres user must be able to reach $PG_DATA: every parent needs o+x.
pg_ensure_traversable() {
  [[ $EUID -eq 0 ]] || return 0
  local dir="$1" parents=()
  while [[ "$dir" != "/" && -n "$dir" ]]; do
    dir="$(dirname "$dir")"
    parents=("$dir" "${parents[@]}")
  done
  # from / downwards, so that each check sees its parents already fixed
  for dir in "${parents[@]}"; do
    if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
      chmod o+x "$dir"
      say "postgres: made $dir traversable (o+x) for the postgres user"
    fi
  done
}

pg_running() {
  pg_installed || return 1
  [[ -f "$PG_DATA/postmaster.pid" ]] || return 1
  # pid_alive: a killed postmaster can linger as a zombie, which pg_ctl
  # status still reports as running.
  pid_alive "$(pg_pid)" && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_pid() { head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_ready() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U postgres -t 2
}

# 0 = ready, 1 = timed out, 2 = the server is gone
pg_wait_ready() {
  local deadline=$((SECONDS + $1))
  until pg_ready; do
    pg_running || return 2
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# After a crash (kill -9) the dead postmaster can stay a zombie for a few
# seconds, and PostgreSQL refuses to start while the pid in postmaster.pid
# exists: wait until it is gone.
pg_wait_stale_postmaster() {
  local pid deadline=$((SECONDS + 30))
  pid="$(pg_pid)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  while [[ -e "/proc/$pid" ]] && ! pid_alive "$pid"; do
    ((SECONDS < deadline)) || die "postgres: old postmaster $pid is still a zombie; retry in a moment"
    sleep 0.2
  done
}

pg_write_config() {
  # Our settings live in prm.conf, included from postgresql.conf and rewritten
  # on every start so that PRM_PG_PORT / PRM_HOME changes take effect.
  local socket_dirs="$PG_SOCKET_DIR"
  # A unix socket path must fit in 107 bytes.
  if (( ${#PG_SOCKET_DIR} + 18 > 107 )); then
    warn "postgres: $PG_SOCKET_DIR is too long for a unix socket; TCP only"
    socket_dirs=""
  fi
  cat >"$PG_DATA/prm.conf" <<EOF
# Written by deploy/up on every start: edit deploy/lib.sh, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$socket_dirs'
max_connections = 200
shared_buffers = 256MB
effective_cache_size = 1GB
maintenance_work_mem = 64MB
work_mem = 8MB
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
EOF
  chown "$PG_USER" "$PG_DATA/prm.conf"
  chmod 600 "$PG_DATA/prm.conf"
}

pg_ensure_cluster() {
  ensure_home
  mkdir -p "$PG_DATA" "$PG_SOCKET_DIR"
  chown "$PG_USER" "$PG_DATA" "$PG_SOCKET_DIR"
  chmod 700 "$PG_DATA"
  chmod 755 "$PG_SOCKET_DIR"
  touch "$PG_LOG"
  chown "$PG_USER" "$PG_LOG"
  pg_ensure_traversable "$PG_DATA"

  if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
    if [[ -n "$(ls -A "$PG_DATA")" ]]; then
      die "postgres: $PG_DATA is not empty but holds no cluster; move it away or wipe $PRM_HOME"
    fi
    say "postgres: creating cluster in $PG_DATA"
    local log="$LOG_DIR/initdb.log"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=trust >"$log" 2>&1; then
      show_tail "$log" 20
      die "postgres: initdb failed"
    fi
    cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# Development cluster of deploy/up: trust on the unix socket and loopback only.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
EOF
    printf "\n# deploy/up settings (port, memory, ...)\ninclude 'prm.conf'\n" >>"$PG_DATA/postgresql.conf"
  fi
  [[ "$(cat "$PG_DATA/PG_VERSION")" == 15 ]] \
    || die "postgres: $PG_DATA holds a PostgreSQL $(cat "$PG_DATA/PG_VERSION") cluster, expected 15; wipe $PRM_HOME"
  pg_write_config
}

# Role prm and databases prm, prm_test (idempotent; silent when all exist).
pg_bootstrap() {
  local out
  if ! out="$(PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 \
      -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres 2>&1 <<'SQL'
SELECT 'CREATE ROLE prm LOGIN SUPERUSER'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prm') \gexec
SELECT 'CREATE DATABASE ' || d || ' OWNER prm'
  FROM unnest(ARRAY['prm', 'prm_test']) AS d
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d) \gexec
SQL
  )"; then
    printf '%s\n' "$out" >&2
    die "postgres: could not create role/databases"
  fi
}

pg_up() {
  local t0 pid
  t0="$(now)"
  if pg_running; then
    local rc=0
    pid="$(pg_pid)"
    pg_wait_ready "$PG_READY_TIMEOUT" || rc=$?
    if [[ $rc -eq 0 ]]; then
      pg_bootstrap
      say "postgres: already running (pid $pid) on 127.0.0.1:$PG_PORT"
      return 0
    fi
    [[ $rc -eq 2 ]] || die "postgres: running (pid $pid) but not accepting connections on 127.0.0.1:$PG_PORT; see $PG_LOG"
    say "postgres: pid $pid exited while we waited; starting again"
  fi
  pg_ensure_installed
  pg_ensure_cluster
  pg_wait_stale_postmaster
  if port_in_use "$PG_PORT"; then
    die "postgres: 127.0.0.1:$PG_PORT is already in use by another process; stop it or set PRM_PG_PORT"
  fi
  say "postgres: starting on 127.0.0.1:$PG_PORT (data $PG_DATA)"
  local log_from
  log_from="$(file_size "$PG_LOG")"
  # 9>&-: the server must not inherit (and so hold) the deploy lock.
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_READY_TIMEOUT" -s >/dev/null 2>&1 9>&-; then
    show_tail "$PG_LOG" 30 "$log_from"
    die "postgres: failed to start"
  fi
  if ! pg_wait_ready "$PG_READY_TIMEOUT"; then  # pg_ctl -w already waited; this double-checks TCP
    show_tail "$PG_LOG" 30 "$log_from"
    die "postgres: started but not accepting connections on 127.0.0.1:$PG_PORT"
  fi
  pg_bootstrap
  say "postgres: ready in $(elapsed_since "$t0") (pid $(pg_pid)); databases prm, prm_test; user prm"
}

pg_down() {
  if ! pg_running; then
    say "postgres: not running"
    return 0
  fi
  local pid
  pid="$(pg_pid)"
  if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 -s >/dev/null 2>&1; then
    warn "postgres: fast shutdown timed out, using immediate"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 -s >/dev/null 2>&1 \
      || die "postgres: could not stop pid $pid"
  fi
  say "postgres: stopped (was pid $pid)"
}

pg_status() {
  if ! pg_running; then
    say "postgres: stopped"
    return 1
  fi
  local pid
  pid="$(pg_pid)"
  if pg_ready; then
    say "postgres: running (pid $pid) on 127.0.0.1:$PG_PORT, accepting connections"
  else
    say "postgres: running (pid $pid) on 127.0.0.1:$PG_PORT, NOT accepting connections"
    return 1
  fi
}

# ==============================================================================
# Kafka
# ==============================================================================
kafka_java() {
  # Small JVM for the tools (StorageTool); logs go to kafka.log too.
  java -Xms64m -Xmx256m -cp "$KAFKA_LIB/*" \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOG_DIR" "$@"
}

kafka_ensure_tools() {
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
  command -v "$PYTHON" >/dev/null || die "kafka: $PYTHON not found (needed for deploy/kafka_ready.py); set PRM_PYTHON"
}

# Fetch the broker jars once; again only if deploy/kafka/pom.xml changes.
kafka_ensure_lib() {
  local stamp
  stamp="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  if [[ -f "$KAFKA_LIB_STAMP" && "$(cat "$KAFKA_LIB_STAMP")" == "$stamp" ]] \
      && compgen -G "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    return 0
  fi
  local t0 tmp="$KAFKA_DIR/lib.partial" log="$LOG_DIR/mvn.log"
  t0="$(now)"
  say "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (one time; log: $log)"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_DIR"
  if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    show_tail "$log" 30
    die "kafka: mvn could not fetch the broker jars"
  fi
  local jar
  for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" \
      "log4j-core-2.24.3.jar" "log4j-slf4j-impl-2.24.3.jar"; do
    [[ -f "$tmp/$jar" ]] || die "kafka: $jar missing after mvn (see $log)"
  done
  printf '%s\n' "$stamp" >"$tmp/.prm-lib-complete"
  rm -rf "$KAFKA_LIB"
  mv "$tmp" "$KAFKA_LIB"
  say "kafka: $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars in $KAFKA_LIB ($(elapsed_since "$t0"))"
}

kafka_render_config() {
  local esc_data tmp="$KAFKA_CONFIG.tmp"
  esc_data="$(printf '%s' "$KAFKA_DATA" | sed 's/[\\|&]/\\&/g')"
  sed -e "s|@PORT@|$KAFKA_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@DATA_DIR@|$esc_data|g" \
      "$KAFKA_TEMPLATE" >"$tmp"
  if grep -v '^#' "$tmp" | grep -q '@[A-Z_]*@'; then
    die "kafka: unrendered placeholder in $tmp: $(grep -v '^#' "$tmp" | grep -m1 '@[A-Z_]*@')"
  fi
  mv "$tmp" "$KAFKA_CONFIG"
}

# Format the storage once. Formatting an existing log dir fails, so skip it
# when meta.properties exists.
kafka_format() {
  mkdir -p "$KAFKA_DATA"
  if [[ -f "$KAFKA_DATA/meta.properties" ]]; then
    # The KRaft voter set records the controller endpoint at format time.
    local formatted_port=""
    [[ -f "$KAFKA_FORMATTED" ]] && formatted_port="$(sed -n 's/^controller_port=//p' "$KAFKA_FORMATTED")"
    if [[ -n "$formatted_port" && "$formatted_port" != "$KAFKA_CONTROLLER_PORT" ]]; then
      die "kafka: storage was formatted for controller port $formatted_port, not $KAFKA_CONTROLLER_PORT; use the old port or wipe: deploy/down kafka && rm -rf $KAFKA_DATA"
    fi
    return 0
  fi
  if [[ -n "$(ls -A "$KAFKA_DATA")" ]]; then
    die "kafka: $KAFKA_DATA is not empty but has no meta.properties; wipe it: rm -rf $KAFKA_DATA"
  fi
  local cluster_id log="$LOG_DIR/kafka-format.log" log_from
  log_from="$(file_size "$log")"
  cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$log" | tail -n 1)"
  [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || { show_tail "$log" 20 "$log_from"; die "kafka: StorageTool random-uuid gave '$cluster_id'"; }
  if ! kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_CONFIG" --standalone >>"$log" 2>&1; then
    show_tail "$log" 20 "$log_from"
    die "kafka: StorageTool format failed"
  fi
  [[ -f "$KAFKA_DATA/meta.properties" ]] || die "kafka: format left no meta.properties (see $log)"
  printf 'cluster_id=%s\ncontroller_port=%s\n' "$cluster_id" "$KAFKA_CONTROLLER_PORT" >"$KAFKA_FORMATTED"
  say "kafka: formatted storage in $KAFKA_DATA (cluster id $cluster_id)"
}

# Sets KAFKA_PID if our broker is running (pid file + live java with our config).
kafka_running() {
  KAFKA_PID=""
  [[ -f "$KAFKA_PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_CONFIG" || return 1
  KAFKA_PID="$pid"
}

kafka_probe() {
  # $1 = timeout seconds; extra args passed to the probe
  local timeout="$1"
  shift
  "$PYTHON" "$DEPLOY_DIR/kafka_ready.py" --host 127.0.0.1 --port "$KAFKA_PORT" \
    --node-id "$KAFKA_NODE_ID" --timeout "$timeout" "$@"
}

kafka_up() {
  local t0
  t0="$(now)"
  if kafka_running; then
    if ! kafka_probe "$KAFKA_READY_TIMEOUT" --quiet --pid "$KAFKA_PID"; then
      show_tail "$KAFKA_LOG" 40
      die "kafka: running (pid $KAFKA_PID) but not answering on 127.0.0.1:$KAFKA_PORT"
    fi
    say "kafka: already running (pid $KAFKA_PID) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  rm -f "$KAFKA_PID_FILE"
  ensure_home
  kafka_ensure_tools
  kafka_ensure_lib
  kafka_render_config
  kafka_format
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_in_use "$port" && die "kafka: 127.0.0.1:$port is already in use by another process; stop it or set PRM_KAFKA_PORT / PRM_KAFKA_CONTROLLER_PORT"
  done

  say "kafka: starting on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, data $KAFKA_DATA)"
  local log_from out_from
  log_from="$(file_size "$KAFKA_LOG")"
  out_from="$(file_size "$KAFKA_OUT")"
  printf '=== %s deploy/up starting kafka ===\n' "$(date -u +%FT%TZ)" >>"$KAFKA_OUT"
  # New session (setsid), no terminal: the broker outlives this script.
  # The child writes its own pid before exec'ing java, so the pid is java's.
  # 9>&-: the broker must not inherit (and so hold) the deploy lock.
  # shellcheck disable=SC2016  # $$, $0 and $@ are the child shell's
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID_FILE" \
    java "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOG_DIR" \
      -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_CONFIG" \
    </dev/null >>"$KAFKA_OUT" 2>&1 9>&- &
  local launcher=$! i
  for ((i = 0; i < 100; i++)); do
    [[ -s "$KAFKA_PID_FILE" ]] && break
    sleep 0.05
  done
  local pid
  pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null || echo "$launcher")"

  local rc=0
  kafka_probe "$KAFKA_READY_TIMEOUT" --quiet --pid "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    show_tail "$KAFKA_LOG" 40 "$log_from"
    show_tail "$KAFKA_OUT" 15 "$out_from"
    if pid_alive "$pid"; then
      kafka_stop_pid "$pid" >/dev/null
    fi
    rm -f "$KAFKA_PID_FILE"
    if [[ $rc -eq 2 ]]; then
      die "kafka: the broker exited during startup (logs: $KAFKA_LOG, $KAFKA_OUT)"
    fi
    die "kafka: broker did not become ready within ${KAFKA_READY_TIMEOUT}s; stopped it (logs: $KAFKA_LOG, $KAFKA_OUT)"
  fi
  say "kafka: ready in $(elapsed_since "$t0") (pid $pid); bootstrap 127.0.0.1:$KAFKA_PORT"
}

# SIGTERM (controlled shutdown), wait, then SIGKILL.
kafka_stop_pid() {
  local pid="$1" deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  kill -TERM "$pid" 2>/dev/null || true
  while pid_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      warn "kafka: pid $pid still running after ${KAFKA_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while pid_alive "$pid"; do sleep 0.1; done
      echo killed
      return 0
    fi
    sleep 0.1
  done
  echo stopped
}

kafka_down() {
  if ! kafka_running; then
    rm -f "$KAFKA_PID_FILE"
    say "kafka: not running"
    return 0
  fi
  local t0 how
  t0="$(now)"
  how="$(kafka_stop_pid "$KAFKA_PID")"
  rm -f "$KAFKA_PID_FILE"
  say "kafka: $how in $(elapsed_since "$t0") (was pid $KAFKA_PID)"
}

kafka_status() {
  if ! kafka_running; then
    say "kafka: stopped"
    return 1
  fi
  local info
  if info="$(kafka_probe 5 2>&1)"; then
    say "kafka: running (pid $KAFKA_PID) on 127.0.0.1:$KAFKA_PORT, ${info#kafka ready at *: }"
  else
    say "kafka: running (pid $KAFKA_PID) on 127.0.0.1:$KAFKA_PORT, NOT answering ($info)"
    return 1
  fi
}
