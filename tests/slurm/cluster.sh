#!/usr/bin/env bash
# A one-node SLURM cluster with accounting, for the `slurm` tests (and for trying the cluster
# recipes of docs/cluster.md on one machine).
#
#   bash tests/slurm/cluster.sh up       # install what is missing (Debian, root), start, wait
#   bash tests/slurm/cluster.sh down     # stop the daemons this script started, nothing else
#   bash tests/slurm/cluster.sh status   # exit 0 when the cluster answers
#   bash tests/slurm/cluster.sh env      # the variables a shell needs: eval "$(... env)"
#
# Everything lives in its own folder ($CASS_SLURM_DIR, default /tmp/cass-slurm): its own
# slurm.conf (clients find it through SLURM_CONF), its own munge socket and key, its own MariaDB
# data folder on 127.0.0.1:$CASS_SLURM_DB_PORT, its own slurmctld/slurmd/slurmdbd ports. A
# system's /etc/slurm, /etc/munge and running daemons are neither read nor touched. Idempotent:
# `up` on a running cluster only checks it. Partitions: `debug` (default) and `gpu` (the same
# node, with one count-only GPU so that GPU requests can be checked with `sbatch --test-only`;
# nothing can run CUDA here).
set -euo pipefail

DIR=${CASS_SLURM_DIR:-/tmp/cass-slurm}
DB_PORT=${CASS_SLURM_DB_PORT:-3317}
CTLD_PORT=${CASS_SLURM_PORT:-6917}
NODE=$(hostname -s)
# The node declares twice the machine's cores: the test jobs mostly wait (a time limit, a
# requeue, a signal), and a waiting job would otherwise hold a core the others could use.
CPUS=$(($(nproc) * 2))
# Leave the machine a quarter of its memory; the node is given the rest (MB).
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.75}' /proc/meminfo)

log() { echo "cluster.sh: $*" >&2; }

env_lines() {
  echo "export SLURM_CONF=$DIR/etc/slurm.conf"
}

install_missing() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v munged >/dev/null || need+=(munge)
  command -v mariadbd >/dev/null || command -v mysqld >/dev/null || need+=(mariadb-server)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing ${need[*]} and not root: cannot install"
    return 3
  fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d keeps the packages' own services from starting: this cluster runs its own.
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; added=1; fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ $added = 1 ] && rm -f $policy
  return 0
}

write_configs() {
  mkdir -p "$DIR"/{etc,log,run,state,spool,munge,db}
  chmod 755 "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
  fi
  cat >"$DIR/etc/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh: a one-node test cluster.
ClusterName=cass
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# the node's CPUs as declared here, not as slurmd counts them
SlurmdParameters=config_overrides
# A requeued job may run again (what preemption and scontrol requeue do).
JobRequeue=1
# Seconds between the SIGTERM and the SIGKILL at a time limit, scancel or requeue.
KillWait=20
MinJobAge=600
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
MessageTimeout=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((CTLD_PORT + 2))
# the munge socket for talking to slurmdbd (AuthInfo covers the other daemons)
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((CTLD_PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  cat >"$DIR/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
IgnoreSystemd=yes
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for _ in $(seq $((limit * 2))); do
    if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up; logs in $DIR/log"
  return 1
}

start_munge() {
  alive "$DIR/run/munged.pid" && return 0
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munged munge --socket="$DIR/munge/munge.socket" -n
}

start_db() {
  alive "$DIR/run/mariadbd.pid" && return 0
  local server
  server=$(command -v mariadbd || command -v mysqld)
  if [ ! -d "$DIR/db/mysql" ]; then
    mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=normal \
      >"$DIR/log/mariadb-install.log" 2>&1
  fi
  "$server" --no-defaults --user=root --datadir="$DIR/db" --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$DIR/run/mariadb.sock" --pid-file="$DIR/run/mariadbd.pid" \
    --skip-grant-tables=0 --innodb-buffer-pool-size=64M --log-error="$DIR/log/mariadb.log" \
    >/dev/null 2>&1 &
  wait_for 60 MariaDB mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -uroot -e "select 1"
  # slurmdbd connects over TCP as root without a password (the database is private to $DIR).
  mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -uroot -e \
    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1';
     FLUSH PRIVILEGES;"
}

start_slurm() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  if ! alive "$DIR/run/slurmdbd.pid"; then
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 60 slurmdbd sacctmgr -i show cluster
  fi
  sacctmgr -i show cluster format=cluster -n | grep -qw cass || sacctmgr -i add cluster cass >/dev/null
  if ! alive "$DIR/run/slurmctld.pid"; then
    slurmctld -f "$SLURM_CONF"
    wait_for 60 slurmctld scontrol ping
  fi
  if ! alive "$DIR/run/slurmd.pid"; then
    slurmd -f "$SLURM_CONF"
  fi
  # A node drained by an earlier start (its state is kept in $DIR/state) is taken back.
  wait_for 30 "slurmd registration" sh -c "sinfo -h -N -o %T | grep -vq unknown"
  if sinfo -h -N -o %T | grep -qE 'drain|down|inval'; then
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  fi
  wait_for 60 "the node" sh -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
}

up() {
  install_missing
  write_configs
  start_munge
  start_db
  start_slurm
  log "up: SLURM_CONF=$DIR/etc/slurm.conf (partitions: $(sinfo -h -o %P | tr '\n' ' '))"
}

stop_pid() {  # stop_pid PIDFILE NAME
  if alive "$1"; then
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

down() {
  [ -d "$DIR/run" ] || return 0
  stop_pid "$DIR/run/slurmd.pid" slurmd
  stop_pid "$DIR/run/slurmctld.pid" slurmctld
  stop_pid "$DIR/run/slurmdbd.pid" slurmdbd
  stop_pid "$DIR/run/mariadbd.pid" mariadbd
  stop_pid "$DIR/run/munged.pid" munged
}

status() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  [ -f "$SLURM_CONF" ] && alive "$DIR/run/slurmd.pid" && scontrol ping >/dev/null 2>&1 &&
    sacct -n -X -S now >/dev/null 2>&1 && sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'
}

case "${1:-up}" in
  up) status || up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
