#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for the cluster tests (tests/test_cluster.py, `make test-cluster`):
#   tests/cluster/cluster.sh install     Debian's slurm-wlm, slurmdbd, munge and mariadb-server (apt; skipped
#                                        when they are installed)
#   tests/cluster/cluster.sh start DIR   munged, MariaDB, slurmdbd, slurmctld and slurmd, state and logs in DIR
#                                        (new or empty); writes DIR/cluster.env (account, partitions)
#   tests/cluster/cluster.sh stop DIR    cancels the cluster's jobs, then stops the daemons that start started,
#                                        by the process ids it recorded in DIR/pids
# Runs as root, the daemons' user. The cluster is configless (slurmd fetches slurm.conf from slurmctld), so
# it needs the two places a configless node uses, which must be free: munge's default socket (slurmd
# authenticates before it has a config) and no /etc/slurm/slurm.conf (clients would read it first).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
# What the tests put in place of the profile's placeholders (profiles/slurm).
ACCOUNT=diffinv-test
CPU_PARTITION=debug
GPU_PARTITION=debug-gpu
NODE=testnode
MUNGE_SOCKET=/run/munge/munge.socket.2
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
COMMANDS=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mungekey mariadbd mariadb-install-db mariadb)

die() { echo "cluster.sh: $*" >&2; exit 1; }

install() {
    local missing=()
    for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "cluster.sh: SLURM, munge and MariaDB are installed"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root (apt-get install ${PACKAGES[*]})"
    echo "cluster.sh: installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start a daemon in the foreground of a new session (so that a Ctrl-C in the caller's terminal does not
# reach it) and record its pid; setsid does not fork here (the child is not a group leader), so $! is it.
spawn() {
    local name=$1; shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    SPAWNED=$!
    echo "$name $SPAWNED" >>"$DIR/pids"
}

# Wait up to 60 s for a command to succeed while the daemon spawned last runs; fail with its output.
await() {
    local what=$1 log=$2; shift 2
    for _ in $(seq 120); do
        if "$@" >/dev/null 2>&1; then return; fi
        [ -e "/proc/$SPAWNED" ] || break
        sleep 0.5
    done
    tail -n 20 "$DIR/log/$what.out" "$log" >&2 2>/dev/null || true
    die "$what did not come up (log: $log)"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "start runs as root (the daemons' user)"
    for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || die "$c is missing: run '$0 install'"; done
    [ ! -e /etc/slurm/slurm.conf ] || die "/etc/slurm/slurm.conf exists: this machine has a SLURM of its own"
    if [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
        die "a munged already answers on $MUNGE_SOCKET: this machine has a SLURM of its own"
    fi
    mkdir -p "$DIR"
    [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
    DIR=$(cd "$DIR" && pwd)
    mkdir -p "$DIR"/{etc,log,run,ctld,spool,db} "$DIR/munge" /run/munge
    chmod 700 "$DIR/munge"
    : >"$DIR/pids"
    # whatever fails from here on (set -e, die), the daemons started so far are stopped
    trap 'echo "cluster.sh: start failed; stopping what it started" >&2; stop' EXIT

    mungekey --create --keyfile="$DIR/munge/munge.key"
    spawn munged munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
    await munged "$DIR/log/munged.log" sh -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"

    local db_port db_pass ctld_port slurmd_port dbd_port
    db_port=$(free_port); dbd_port=$(free_port); ctld_port=$(free_port); slurmd_port=$(free_port)
    db_pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    mariadb-install-db --no-defaults --datadir="$DIR/db" --auth-root-authentication-method=normal \
        --skip-test-db --user=root >"$DIR/log/mariadb-install.out" 2>&1
    spawn mariadbd mariadbd --no-defaults --datadir="$DIR/db" --socket="$DIR/run/mysqld.sock" --port="$db_port" \
        --bind-address=127.0.0.1 --user=root --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
    local sql=(mariadb --no-defaults -S "$DIR/run/mysqld.sock" -u root)
    await mariadbd "$DIR/log/mariadbd.log" "${sql[@]}" -e "SELECT 1"
    "${sql[@]}" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
                    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    local cpus mem
    cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')
    mem=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p')
    local subst=(-e "s|@STATE@|$DIR|g" -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g"
                 -e "s|@DBD_PORT@|$dbd_port|g" -e "s|@DB_PORT@|$db_port|g" -e "s|@DB_PASS@|$db_pass|g"
                 -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem|g"
                 -e "s|@CPU_PARTITION@|$CPU_PARTITION|g" -e "s|@GPU_PARTITION@|$GPU_PARTITION|g")
    sed "${subst[@]}" "$HERE/slurm.conf.in" >"$DIR/etc/slurm.conf"
    (umask 077; sed "${subst[@]}" "$HERE/slurmdbd.conf.in" >"$DIR/etc/slurmdbd.conf")  # it holds a password
    # slurmdbd finds slurmdbd.conf beside SLURM_CONF; the controller and sacctmgr read slurm.conf from there too
    export SLURM_CONF=$DIR/etc/slurm.conf
    spawn slurmdbd slurmdbd -D
    await slurmdbd "$DIR/log/slurmdbd.log" sacctmgr -n list cluster
    sacctmgr -i add cluster diffinv-test >>"$DIR/log/sacctmgr.out"
    sacctmgr -i add account "$ACCOUNT" Description="diffinv cluster tests" Organization=diffinv \
        >>"$DIR/log/sacctmgr.out"
    sacctmgr -i add user root Account="$ACCOUNT" >>"$DIR/log/sacctmgr.out"
    spawn slurmctld slurmctld -D -f "$SLURM_CONF"
    await slurmctld "$DIR/log/slurmctld.log" scontrol ping
    unset SLURM_CONF
    spawn slurmd slurmd -D -N "$NODE" --conf-server "127.0.0.1:$ctld_port"
    # a client without SLURM_CONF sees the node idle: it reads slurmd's copy of the configuration
    await slurmd "$DIR/log/slurmd.log" sh -c "sinfo -h -n '$NODE' -o %t | grep -qx idle"
    printf 'ACCOUNT=%s\nCPU_PARTITION=%s\nGPU_PARTITION=%s\nNODE=%s\n' \
        "$ACCOUNT" "$CPU_PARTITION" "$GPU_PARTITION" "$NODE" >"$DIR/cluster.env"
    trap - EXIT
    echo "cluster.sh: one-node SLURM up (state in $DIR)"
}

stop() {
    [ -f "$DIR/pids" ] || { echo "cluster.sh: nothing started in $DIR"; return 0; }
    local name pid
    # the jobs first, through SLURM, while slurmctld and slurmd still run them
    if grep -q '^slurmd ' "$DIR/pids" && [ -f "$DIR/etc/slurm.conf" ]; then
        SLURM_CONF=$DIR/etc/slurm.conf scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 30); do
            [ -z "$(SLURM_CONF=$DIR/etc/slurm.conf squeue -h -u root 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    # then the daemons, last started first, by pid; a pid whose process is another program is left alone
    tac "$DIR/pids" | while read -r name pid; do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 40); do
            [ -e "/proc/$pid" ] || break
            sleep 0.25
        done
        if [ -e "/proc/$pid" ]; then
            echo "cluster.sh: $name ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # slurmd's configless copy of slurm.conf points into DIR
    if [ -L /run/slurm/conf ] && [[ "$(readlink /run/slurm/conf)" == "$DIR"/* ]]; then
        rm -f /run/slurm/conf
    fi
    mv "$DIR/pids" "$DIR/pids.stopped"
    echo "cluster.sh: stopped (logs in $DIR/log)"
}

case "${1:-}" in
    install) install ;;
    start | stop)
        [ $# -eq 2 ] || die "usage: $0 $1 DIR"
        DIR=$2
        "$1"
        ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
