#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite (docs/testing.md), from Debian's packages.
#
# Usage:
#   scripts/postgres.sh install          install PostgreSQL (apt-get) when initdb/pg_ctl are missing
#   scripts/postgres.sh start DIR PORT   create (once) and start a cluster kept in DIR, listening on
#                                        127.0.0.1:PORT, create the database localrank_test, and
#                                        print its URL (also written to DIR/url)
#   scripts/postgres.sh stop DIR         stop the cluster kept in DIR (no-op when it is not running)
#   scripts/postgres.sh status DIR       print the URL and exit 0 when it is running, else exit 1
#
# Every command is idempotent; `start` on a running cluster only checks it and prints the URL.
#
# The cluster:
#   - is created by initdb as the `postgres` system user when this runs as root (initdb refuses
#     root); otherwise as the calling user. The database superuser is `postgres` either way;
#   - trusts every connection, so it listens on 127.0.0.1 only, with its unix socket inside DIR
#     (mode 0700), and is for tests only: any local user can connect to PORT as the superuser;
#   - keeps PostgreSQL's default durability settings (fsync on), so that what tests measure is
#     what a real server does.
# When PORT is taken by something else, the next free port up to PORT+20 is used and said so; the
# URL printed (and DIR/url) always has the port actually used.
# When the postgres user cannot reach DIR (a parent directory it may not enter, such as a 0700
# home), the cluster lives in ${TMPDIR:-/tmp}/localrank-pg-<hash of DIR> instead; DIR/cluster-root
# names it.
#
# Environment: PG_BINDIR  the directory of initdb/pg_ctl (default: the newest
#                         /usr/lib/postgresql/*/bin, else initdb on PATH)
set -euo pipefail

DB_NAME=localrank_test
DB_USER=postgres
PORT_TRIES=20

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# The directory holding initdb, pg_ctl and pg_isready; empty when PostgreSQL is not installed.
pg_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    local d
    d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
        return
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

have_server() {
    local b
    b="$(pg_bindir)"
    [ -n "$b" ] && [ -x "$b/initdb" ] && [ -x "$b/pg_ctl" ] && [ -x "$b/postgres" ] && [ -x "$b/pg_isready" ]
}

cmd_install() {
    if have_server; then
        log "installed: $("$(pg_bindir)/postgres" --version)"
        return 0
    fi
    local sudo=""
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and this is not root (no sudo either): install Debian's postgresql package"
        sudo=sudo
    fi
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is missing: install a PostgreSQL server and set PG_BINDIR to its bin directory"
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    have_server || die "apt-get installed postgresql but initdb/pg_ctl were not found under /usr/lib/postgresql/*/bin"
    log "installed: $("$(pg_bindir)/postgres" --version)"
}

# Run a command as the user that owns the cluster, from / (the caller's directory may be one that
# user cannot enter, and initdb and postgres look at it).
as_owner() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# The same, with every file descriptor above 2 closed first: the server that pg_ctl leaves
# running must not hold this script's lock (fd 9) or a pipe of whatever ran this script, or
# those would wait for it.
as_owner_detached() {
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        as_owner "$@"
    )
}

owner_name() {
    if is_root; then echo postgres; else id -un; fi
}

abspath() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# The directory that holds data/, the socket and the log: DIR itself when the owner can use it,
# otherwise a directory under /tmp. Recorded in DIR/cluster-root so that stop and status find it.
cluster_root() {
    local dir="$1"
    if [ -f "$dir/cluster-root" ]; then
        cat "$dir/cluster-root"
        return
    fi
    echo "$dir"
}

prepare_root() {
    local dir="$1" root
    if is_root; then
        id postgres >/dev/null 2>&1 || die "there is no postgres system user (Debian's postgresql-common creates it)"
        chown postgres: "$dir"
    fi
    chmod 0700 "$dir"
    if as_owner test -w "$dir" -a -x "$dir"; then
        root="$dir"
    else
        root="${TMPDIR:-/tmp}/localrank-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
        log "user $(owner_name) cannot enter $dir (a parent directory is closed to it): the cluster lives in $root"
        mkdir -p "$root"
        if is_root; then chown postgres: "$root"; fi
        chmod 0700 "$root"
    fi
    # The unix socket path must fit in sun_path (107 bytes).
    if [ "$(printf '%s' "$root/.s.PGSQL.65535.lock" | wc -c)" -gt 107 ]; then
        root="${TMPDIR:-/tmp}/localrank-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
        log "$dir is too long a path for a unix socket: the cluster lives in $root"
        mkdir -p "$root"
        if is_root; then chown postgres: "$root"; fi
        chmod 0700 "$root"
    fi
    echo "$root" >"$dir/cluster-root"
    echo "$root"
}

# The PID of the postmaster running on DATA, or nothing. A postmaster.pid whose process is gone,
# or belongs to another program (PIDs are reused, in containers especially), is stale: the
# postmaster's working directory is always its data directory, so that is what is checked.
running_pid() {
    local data="$1" pid cwd
    [ -f "$data/postmaster.pid" ] || return 0
    pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
    if [ -n "$cwd" ] && [ "$cwd" = "$(cd "$data" && pwd -P)" ]; then
        echo "$pid"
    fi
}

# The port the running postmaster listens on (line 4 of postmaster.pid).
running_port() {
    sed -n 4p "$1/postmaster.pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

psql_cmd() {
    local b
    b="$(pg_bindir)"
    if [ -x "$b/psql" ]; then echo "$b/psql"; else echo psql; fi
}

ensure_database() {
    local port="$1" psql exists
    psql="$(psql_cmd)"
    exists="$(PGCONNECT_TIMEOUT=10 "$psql" -X -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")"
    if [ "$exists" != 1 ]; then
        PGCONNECT_TIMEOUT=10 "$psql" -X -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres \
            -c "CREATE DATABASE $DB_NAME" >/dev/null
    fi
}

publish_url() {
    local dir="$1" port="$2" url
    url="postgresql://$DB_USER@127.0.0.1:$port/$DB_NAME"
    echo "$port" >"$dir/port"
    echo "$url" >"$dir/url.tmp"
    mv -f "$dir/url.tmp" "$dir/url"
    echo "$url"
}

init_cluster() {
    local root="$1" data="$1/data" bindir version
    bindir="$(pg_bindir)"
    version="$("$bindir/pg_ctl" --version | awk '{print $NF}' | cut -d. -f1)"
    if [ -f "$data/PG_VERSION" ] && [ "$(cat "$data/PG_VERSION")" != "$version" ]; then
        log "the cluster in $data is PostgreSQL $(cat "$data/PG_VERSION"), the server is $version: recreating it"
        rm -rf "$data"
    fi
    if [ -f "$data/PG_VERSION" ]; then
        return 0
    fi
    # A data directory without PG_VERSION is what an interrupted initdb leaves.
    rm -rf "$data"
    log "initdb $data (as $(owner_name))"
    as_owner "$bindir/initdb" -D "$data" -U "$DB_USER" --auth=trust --no-locale -E UTF8 \
        --no-sync --no-instructions >"$root/initdb.log" 2>&1 \
        || { cat "$root/initdb.log" >&2; die "initdb failed"; }
    as_owner sh -c "cat > '$data/pg_hba.conf'" <<'EOF'
# localrank test cluster (scripts/postgres.sh): trust, on the unix socket and 127.0.0.1 only.
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
EOF
    as_owner sh -c "cat >> '$data/postgresql.conf'" <<EOF

# localrank test cluster (scripts/postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$root'
unix_socket_permissions = 0700
logging_collector = off
EOF
}

cmd_start() {
    local dir port root data bindir pid p first
    [ $# -eq 2 ] || die "usage: $0 start DIR PORT"
    [[ "$2" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$2'"
    have_server || die "PostgreSQL is not installed: run '$0 install' first"
    dir="$(abspath "$1")"
    port="$2"
    bindir="$(pg_bindir)"

    # One start at a time per DIR (two `make test` in one tree).
    exec 9>"$dir/.lock"
    flock 9

    root="$(prepare_root "$dir")"
    data="$root/data"

    pid="$(running_pid "$data")"
    if [ -n "$pid" ]; then
        p="$(running_port "$data")"
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$p" -t 10; then
            ensure_database "$p"
            publish_url "$dir" "$p"
            return 0
        fi
        die "a postmaster (PID $pid) runs on $data but does not accept connections on 127.0.0.1:$p; see $root/postgres.log"
    fi

    # Nothing of ours runs: a leftover postmaster.pid or socket lock file is stale.
    if [ -f "$data/postmaster.pid" ]; then
        log "removing a stale $data/postmaster.pid"
        rm -f "$data/postmaster.pid"
    fi
    rm -f "$root"/.s.PGSQL.*

    init_cluster "$root"

    first="$port"
    while port_in_use "$port"; do
        if [ "$port" -ge $((first + PORT_TRIES)) ]; then
            die "ports $first-$port on 127.0.0.1 are all in use"
        fi
        port=$((port + 1))
    done
    if [ "$port" != "$first" ]; then
        log "port $first is in use by another program: using $port"
    fi

    if ! as_owner_detached "$bindir/pg_ctl" -D "$data" -l "$root/postgres.log" -o "-p $port" -w -t 60 start >/dev/null; then
        tail -n 20 "$root/postgres.log" >&2 || true
        die "pg_ctl start failed (log: $root/postgres.log); '$0 stop $1' and removing $1 starts afresh"
    fi
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 || die "the server started but 127.0.0.1:$port does not accept connections"
    ensure_database "$port"
    publish_url "$dir" "$port"
}

cmd_stop() {
    local dir root data pid
    [ $# -eq 1 ] || die "usage: $0 stop DIR"
    [ -d "$1" ] || return 0
    dir="$(cd "$1" && pwd -P)"
    root="$(cluster_root "$dir")"
    data="$root/data"
    rm -f "$dir/url"
    pid="$(running_pid "$data")"
    if [ -z "$pid" ]; then
        log "not running ($data)"
        return 0
    fi
    as_owner "$(pg_bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    log "stopped ($data)"
}

cmd_status() {
    local dir root data p
    [ $# -eq 1 ] || die "usage: $0 status DIR"
    [ -d "$1" ] || { log "not running"; return 1; }
    dir="$(cd "$1" && pwd -P)"
    root="$(cluster_root "$dir")"
    data="$root/data"
    if [ -z "$(running_pid "$data")" ]; then
        log "not running ($data)"
        return 1
    fi
    p="$(running_port "$data")"
    "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$p" -t 5 || { log "running but not ready on port $p"; return 1; }
    echo "postgresql://$DB_USER@127.0.0.1:$p/$DB_NAME"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) echo "usage: $0 install | start DIR PORT | stop DIR | status DIR" >&2; exit 2 ;;
esac
