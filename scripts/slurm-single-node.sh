#!/usr/bin/env bash
# slurm-single-node.sh: bring up and tear down a real one-node Slurm cluster
# (munged + slurmctld + slurmd on this machine) for integration tests.
#
# Usage:
#   scripts/slurm-single-node.sh install
#       Idempotent. Installs slurm-wlm and munge with apt-get when sbatch,
#       slurmctld, slurmd, munged or munge is missing. Exits 3 (with one
#       line on stderr) when Slurm cannot be installed (not root and no
#       password-less sudo, or apt-get failed).
#
#   scripts/slurm-single-node.sh start STATE_DIR
#       Writes /etc/munge/munge.key if it is absent and /etc/slurm/slurm.conf
#       if it is absent or was written by this script (see CONF_MARKER), then
#       starts munged, slurmctld and slurmd (each only if not already running)
#       in foreground mode (detached with nohup), logging to STATE_DIR/<daemon>.log.
#       PIDs of the daemons started by THIS script are appended to
#       STATE_DIR/pids ("name pid" per line). Waits up to
#       SLURM_START_TIMEOUT seconds (default 60) for the node to be idle, then
#       prints "ready". If a cluster is already up with a usable node, it is
#       reused and "ready" is printed without starting anything.
#       On failure: message + tail of the daemon logs on stderr, the daemons
#       started by this invocation are stopped, and the exit code is nonzero
#       (3: Slurm not installed / not root; 1: anything else).
#
#   scripts/slurm-single-node.sh stop STATE_DIR
#       Sends TERM (then KILL after a few seconds) to exactly the PIDs listed
#       in STATE_DIR/pids (only if the PID still runs the recorded program),
#       then removes STATE_DIR/pids. Never touches daemons it did not start.
#
# Environment knobs:
#   SLURM_START_TIMEOUT  seconds to wait for the node to become idle (60)
#   SLURM_CONF_FORCE=1   back up a foreign /etc/slurm/slurm.conf to
#                        slurm.conf.bak.<epoch> and replace it with ours
#                        (without it, a foreign slurm.conf makes start fail)
#
# Needs root (re-executes itself with `sudo -n` when not root and sudo works).
# Works without systemd: the daemons are started directly.
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
CONF=/etc/slurm/slurm.conf
CONF_MARKER="# Written by slurm-single-node.sh"
MUNGE_KEY=/etc/munge/munge.key
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
START_TIMEOUT="${SLURM_START_TIMEOUT:-60}"

die() { # die CODE MESSAGE
    echo "slurm-single-node: $2" >&2
    exit "$1"
}

usage() {
    sed -n '2,/^set -euo/p' "$SELF" | sed -n 's/^# \{0,1\}//p' >&2
    exit 2
}

# Become root: run as is when root, re-exec through password-less sudo when
# possible, otherwise fail with exit code 3.
ensure_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -- "$SELF" "$@"
    fi
    die 3 "cannot install/run Slurm: not root and no password-less sudo available"
}

missing_tools() {
    local t out=()
    for t in sbatch squeue sinfo scontrol slurmctld slurmd munged munge unmunge; do
        command -v "$t" >/dev/null 2>&1 || out+=("$t")
    done
    echo "${out[*]}"
}

cmd_install() {
    local missing
    missing="$(missing_tools)"
    if [ -z "$missing" ]; then
        echo "slurm-single-node: slurm-wlm and munge already installed"
        return 0
    fi
    ensure_root install
    command -v apt-get >/dev/null 2>&1 ||
        die 3 "cannot install Slurm: apt-get not found (missing: $missing)"

    # Keep package maintainer scripts from starting services (no systemd
    # here; a munged started by dpkg would be a daemon nobody tracks).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0 log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge >"$log" 2>&1; then
        # Maybe stale/empty package lists: refresh once and retry.
        { apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge; } >>"$log" 2>&1 || rc=$?
    fi
    [ "$created_policy" -eq 1 ] && rm -f "$policy"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die 3 "cannot install Slurm: apt-get install slurm-wlm munge failed (exit $rc)"
    fi
    rm -f "$log"
    missing="$(missing_tools)"
    [ -z "$missing" ] || die 3 "cannot install Slurm: still missing after apt-get: $missing"
    echo "slurm-single-node: installed slurm-wlm and munge"
}

# ---------------------------------------------------------------- helpers --

node_name() { hostname -s; }

# True when the PID is alive and runs the program NAME (guards PID reuse).
pid_is() { # pid_is PID NAME
    local comm
    [ -r "/proc/$1/comm" ] || return 1
    comm="$(cat "/proc/$1/comm" 2>/dev/null)" || return 1
    [ "$comm" = "$2" ] || return 1
    # A zombie is not running any more.
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# True when a live (non-zombie) process runs the program NAME. Killed daemons
# linger as zombies until init reaps them, and pgrep lists zombies too.
daemon_running() {
    local p
    for p in $(pgrep -x "$1" 2>/dev/null || true); do
        pid_is "$p" "$1" && return 0
    done
    return 1
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# States of our node ("idle", "mix", "alloc", "down*", "drain", ...).
node_state() { sinfo -h -N -n "$(node_name)" -o %t 2>/dev/null | head -n1; }

# A running cluster we can submit to: controller answers and node is usable.
cluster_usable() {
    ctld_ok || return 1
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

write_munge_key() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 700 /etc/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    if [ ! -s "$MUNGE_KEY" ]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
}

write_slurm_conf() {
    local host cpus mem_kb mem_mb
    host="$(node_name)"
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    # Stay well below the real memory: slurmd drains a node whose RealMemory
    # is larger than what it detects.
    mem_mb=$((mem_kb * 9 / 10 / 1024))

    if [ -e "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$CONF_MARKER"; then
        if [ "${SLURM_CONF_FORCE:-0}" = 1 ]; then
            local bak
            bak="$CONF.bak.$(date +%s)"
            cp -p "$CONF" "$bak"
            echo "slurm-single-node: backed up foreign $CONF to $bak" >&2
        else
            die 1 "$CONF exists and was not written by this script; refusing to overwrite (set SLURM_CONF_FORCE=1 to back it up and replace it)"
        fi
    fi

    mkdir -p /etc/slurm "$SPOOL_CTLD" "$SPOOL_D"
    local tmp
    tmp="$(mktemp /etc/slurm/.slurm.conf.XXXXXX)"
    cat >"$tmp" <<EOF
$CONF_MARKER (single-node test cluster); it may
# rewrite this file on every start. Remove this header to keep your changes.
ClusterName=singlenode
# Explicit loopback address: no dependence on the hostname resolving.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No mail on this box; silences 'Configured MailProg is invalid'.
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# Default batch_sched_delay=3 adds ~3 s between waves of array tasks.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxArraySize=100001
MaxJobCount=200000
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
}

record_pid() { # record_pid STATE_DIR NAME PID
    echo "$2 $3" >>"$1/pids"
}

# Drop entries whose process is gone (or whose PID now runs something else).
prune_pids() {
    local f="$1/pids" name pid tmp
    [ -f "$f" ] || return 0
    tmp="$(mktemp)"
    while read -r name pid; do
        [ -n "${pid:-}" ] || continue
        if pid_is "$pid" "$name"; then echo "$name $pid" >>"$tmp"; fi
    done <"$f"
    if [ -s "$tmp" ]; then cat "$tmp" >"$f"; else rm -f "$f"; fi
    rm -f "$tmp"
}

# start_daemon STATE_DIR NAME CMD... : start CMD (which must stay in the
# foreground) detached from our session; record and print its PID.
start_daemon() {
    local dir="$1" name="$2"
    shift 2
    # nohup execs CMD, so $! is the daemon's own PID.
    nohup "$@" </dev/null >>"$dir/$name.log" 2>&1 &
    local pid=$!
    record_pid "$dir" "$name" "$pid"
    STARTED_NOW+=("$pid")
}

show_logs() {
    local dir="$1" f
    for f in "$dir"/munged.log "$dir"/slurmctld.log "$dir"/slurmd.log; do
        [ -s "$f" ] || continue
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2
    done
    echo "----- sinfo -N -l / sinfo -R -----" >&2
    sinfo -N -l >&2 2>&1 || true
    sinfo -R >&2 2>&1 || true
}

START_DIR=""
STARTED_NOW=()
fail_start() {
    # Collect diagnostics while the daemons still run, clean up, then print
    # (so a closed stderr cannot stop the cleanup half-way).
    local diag
    diag="$(show_logs "$START_DIR" 2>&1 || true)"
    # Stop only what this invocation started.
    if [ "${#STARTED_NOW[@]}" -gt 0 ]; then
        kill_pids "${STARTED_NOW[@]}"
        prune_pids "$START_DIR"
    fi
    {
        echo "slurm-single-node: start failed: $1"
        echo "$diag"
    } >&2 || true
    exit 1
}

# Fail fast when a daemon started by this invocation has died.
check_started_alive() {
    local p
    for p in "${STARTED_NOW[@]}"; do
        if ! kill -0 "$p" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null; then
            fail_start "daemon with PID $p ($(grep -h " $p\$" "$START_DIR/pids" | cut -d' ' -f1)) exited"
        fi
    done
}

# wait_for SECONDS CMD... : poll CMD every 0.5 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        check_started_alive
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

node_idle() { [ "$(node_state)" = idle ]; }

cmd_start() {
    local dir="${1:-}"
    [ -n "$dir" ] || usage
    ensure_root start "$dir"
    local missing
    missing="$(missing_tools)"
    [ -z "$missing" ] || die 3 "Slurm is not installed (missing: $missing); run '$0 install' first"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    START_DIR="$dir"
    prune_pids "$dir"

    # Reuse a cluster that is already up (e.g. from an earlier start).
    if munge_ok && cluster_usable; then
        echo ready
        return 0
    fi

    write_munge_key
    write_slurm_conf

    if ! daemon_running munged; then
        # munged refuses a key owned by another user, so run it as munge;
        # setpriv execs (no extra process), -F keeps it in the foreground.
        start_daemon "$dir" munged setpriv --reuid=munge --regid=munge --init-groups \
            munged -F
    fi
    wait_for 15 munge_ok || fail_start "munged does not answer (munge -n | unmunge fails)"

    if ! daemon_running slurmctld; then
        # -D foreground (logs to stderr), -c start from a clean state (no
        # jobs or node states left over from an earlier test run).
        start_daemon "$dir" slurmctld slurmctld -D -c
    fi
    wait_for 30 ctld_ok || fail_start "slurmctld does not answer 'scontrol ping'"

    if ! daemon_running slurmd; then
        start_daemon "$dir" slurmd slurmd -D
    fi
    wait_for "$START_TIMEOUT" node_idle ||
        fail_start "node $(node_name) not idle after ${START_TIMEOUT}s (state: $(node_state || true))"

    check_started_alive
    echo ready
}

# kill_pids PID... : TERM, wait up to ~10 s, then KILL what is left.
kill_pids() {
    local p left
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        left=0
        for p in "$@"; do
            if [ -d "/proc/$p" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null; then
                left=1
            fi
        done
        [ "$left" -eq 1 ] || return 0
        sleep 0.5
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

cmd_stop() {
    local dir="${1:-}"
    [ -n "$dir" ] || usage
    local f="$dir/pids"
    if [ ! -f "$f" ]; then
        echo "slurm-single-node: no $f; nothing to stop"
        return 0
    fi
    ensure_root stop "$dir"
    local name pid ordered=() n
    # Stop slurmd before slurmctld before munged (reverse start order).
    for n in slurmd slurmctld munged; do
        while read -r name pid; do
            [ "$name" = "$n" ] || continue
            if pid_is "$pid" "$name"; then ordered+=("$pid"); fi
        done <"$f"
    done
    for pid in "${ordered[@]}"; do
        kill_pids "$pid"
    done
    # Give init a moment to reap them, so `pgrep` right after stop is empty.
    for _ in $(seq 1 10); do
        local left=0
        for pid in "${ordered[@]}"; do [ -d "/proc/$pid" ] && left=1; done
        [ "$left" -eq 1 ] || break
        sleep 0.5
    done
    rm -f "$f"
    echo "slurm-single-node: stopped ${#ordered[@]} daemon(s)"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
