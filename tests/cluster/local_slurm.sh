#!/usr/bin/env bash
# A throwaway single-node SLURM cluster for the cluster tests.
#
#   tests/cluster/local_slurm.sh start DIR   # prints SLURM_CONF=DIR/slurm.conf when it is up
#   tests/cluster/local_slurm.sh stop DIR    # cancels its jobs, stops its daemons
#
# Everything lives under DIR: its own slurm.conf (clients find it through $SLURM_CONF), a fresh
# munge key and socket, state, spool, pid and log files. The one node is this machine, named by
# `hostname -s` and reached on 127.0.0.1, on two free ports; nothing is written to /etc/slurm
# or /etc/munge, and no system service is touched. Needs root (slurmd runs jobs as their user)
# and installs slurm-wlm and munge with apt-get when they are missing.
set -euo pipefail

PACKAGES=(slurm-wlm munge)
# Daemons live in sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/sbin:/sbin"

die() {
	echo "local SLURM cluster: $*" >&2
	exit 1
}

usage() {
	die "usage: $0 start|stop DIR"
}

have_tools() {
	local tool
	for tool in munged slurmctld slurmd sbatch squeue sinfo scancel; do
		command -v "$tool" >/dev/null || return 1
	done
}

install_tools() {
	have_tools && return 0
	[ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed, and installing them needs root: run \`apt-get install ${PACKAGES[*]}\` as root"
	command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get here to install them"
	local log="$1/apt.log"
	export DEBIAN_FRONTEND=noninteractive
	echo "local SLURM cluster: installing ${PACKAGES[*]} with apt-get" >&2
	# The package lists may be missing or stale on a fresh machine: update once on failure.
	if ! apt-get install -y -q "${PACKAGES[@]}" >"$log" 2>&1; then
		apt-get update -q >>"$log" 2>&1 || die "apt-get update failed: $(tail -n 1 "$log")"
		apt-get install -y -q "${PACKAGES[@]}" >>"$log" 2>&1 ||
			die "apt-get install ${PACKAGES[*]} failed: $(tail -n 1 "$log")"
	fi
	have_tools || die "apt-get installed ${PACKAGES[*]} but munged/slurmctld/slurmd/sbatch are still not on PATH"
}

free_ports() {
	# Two ports the kernel hands out as free now, so that clusters never collide.
	python3 - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

write_config() {
	local dir="$1" node ctld_port node_port cpus memory_mb
	node="$(hostname -s)"
	read -r ctld_port node_port < <(free_ports)
	cpus="$(nproc)"
	# Leave the node some memory of its own; memory is not a scheduled resource here (CR_CPU).
	memory_mb="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
	cat >"$dir/slurm.conf" <<EOF
ClusterName=propensity-test
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${dir}/munge/munge.socket
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/run/slurmctld.pid
SlurmdPidFile=${dir}/run/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
# Plain process tracking: no cgroups needed, which containers often lack.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# No accounting database, as on many real clusters: nothing may depend on sacct.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
EOF
}

log_tails() {
	local dir="$1" file
	for file in "$dir"/log/*.log; do
		[ -f "$file" ] && echo "--- $file" && tail -n 15 "$file"
	done
}

start() {
	local dir="$1"
	[ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as their user); CI runs as root"
	install_tools "$dir"
	mkdir -p "$dir"/{munge,state,spool,run,log}
	# munged wants its socket folder open to all (every user talks to it) and the key private.
	chmod 755 "$dir" "$dir/munge"
	dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
	chmod 400 "$dir/munge/munge.key"
	# --force: the socket may sit below a private folder (pytest's tmp): only root uses it.
	munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
		--pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
		--seed-file="$dir/munge/munged.seed" ||
		die "munged did not start: $(tail -n 1 "$dir/log/munged.log" 2>/dev/null)"
	write_config "$dir"
	export SLURM_CONF="$dir/slurm.conf"
	slurmctld -i || { log_tails "$dir" >&2; die "slurmctld did not start (logs above)"; }
	slurmd || { log_tails "$dir" >&2; die "slurmd did not start (logs above)"; }
	local waited=0
	until [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; do
		if [ "$waited" -ge 60 ]; then
			log_tails "$dir" >&2
			stop "$dir" >/dev/null 2>&1 || true
			die "the node is not idle after 30 s (state: $(sinfo -h -o %t 2>&1); logs above)"
		fi
		sleep 0.5
		waited=$((waited + 1))
	done
	echo "SLURM_CONF=$SLURM_CONF"
}

stop_pid_file() {
	local pid_file="$1" pid waited=0
	[ -f "$pid_file" ] || return 0
	pid="$(cat "$pid_file")"
	kill -TERM "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$waited" -ge 100 ]; then
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
}

stray_pids() {
	# Processes started by this cluster (slurmstepd, job steps) carry its SLURM_CONF.
	local conf="$1" environ pid
	for environ in /proc/[0-9]*/environ; do
		pid="${environ#/proc/}"
		pid="${pid%/environ}"
		[ "$pid" = "$$" ] && continue
		if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$conf"; then
			echo "$pid"
		fi
	done
}

stop() {
	local dir="$1" waited=0 pid
	export SLURM_CONF="$dir/slurm.conf"
	if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
		scancel --quiet --user="$(id -un)" 2>/dev/null || true
		while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$waited" -lt 60 ]; do
			sleep 0.5
			waited=$((waited + 1))
		done
	fi
	stop_pid_file "$dir/run/slurmd.pid"
	stop_pid_file "$dir/run/slurmctld.pid"
	stop_pid_file "$dir/run/munged.pid"
	for pid in $(stray_pids "$SLURM_CONF"); do
		kill -KILL "$pid" 2>/dev/null || true
	done
	echo "local SLURM cluster under $dir stopped"
}

[ $# -eq 2 ] || usage
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
case "$1" in
start) start "$dir" ;;
stop) stop "$dir" ;;
*) usage ;;
esac
