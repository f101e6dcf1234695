#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does and we are root on Debian, install Debian's
# docker.io, runsc (gVisor) and debootstrap, register runsc, start dockerd and wait for it.
# Otherwise say exactly what the user must do. Idempotent and quick when the engine is up.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

DAEMON_JSON=/etc/docker/daemon.json

register_runsc() {
  # Register gVisor as runtime "runsc" (no network inside the sandbox) and "runsc-host" (for
  # networked tiers), keeping any other settings the file already holds. Returns 0 if changed,
  # 1 if it was already so (or runsc is not installed).
  local runsc
  runsc=$(command -v runsc || true)
  [ -n "$runsc" ] || return 1
  mkdir -p /etc/docker
  python3 - "$DAEMON_JSON" "$runsc" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as fh:
        conf = json.load(fh)
except FileNotFoundError:
    conf = {}
# --oci-seccomp: gVisor applies the container's seccomp profile to the sandboxed program
# (oi's denies only setuid/setgid bits, which the gofer would write to the host).
wanted = {
    "runsc": {"path": runsc, "runtimeArgs": ["--network=none", "--oci-seccomp"]},
    "runsc-host": {"path": runsc, "runtimeArgs": ["--network=host", "--oci-seccomp"]},
}
runtimes = conf.setdefault("runtimes", {})
if all(runtimes.get(k) == v for k, v in wanted.items()):
    sys.exit(1)
runtimes.update(wanted)
tmp = path + ".oi-tmp"
with open(tmp, "w") as fh:
    json.dump(conf, fh, indent=2)
os.replace(tmp, path)
PY
}

if engine_answers; then
  # A running engine reloads its runtimes on SIGHUP: apply a changed registration now.
  if [ "$(id -u)" = 0 ] && register_runsc && pid=$(pgrep -x dockerd | head -n 1); then
    log "gVisor runtimes registered anew in $DAEMON_JSON; reloading dockerd (SIGHUP)"
    kill -HUP "$pid"
    sleep 1
  fi
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "no Docker engine answers (docker info failed)."
  log "fix: start Docker (e.g. 'sudo systemctl start docker') and add yourself to the 'docker' group"
  log "     ('sudo usermod -aG docker \$USER', then log in again), or run 'sudo make setup'."
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v runsc >/dev/null 2>&1 \
   || ! command -v debootstrap >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no Docker engine and no apt-get: install Docker Engine for your system, then run 'make setup' again."
    exit 1
  fi
  log "installing docker.io, runsc and debootstrap from Debian (one time)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io runsc debootstrap >/dev/null
fi

register_runsc || true

daemon_alive() { pgrep -x dockerd >/dev/null 2>&1 || pgrep -x containerd >/dev/null 2>&1; }

# On this kind of machine /run is not a tmpfs: a machine that was stopped (or snapshotted) with
# dockerd running keeps dockerd's runtime state - pid files, containerd's task and shim state,
# network namespaces - which a new dockerd then tries to restore (and can hang on). A reboot
# would have emptied these folders; with no dockerd or containerd alive, empty them the same way.
clear_stale_runtime_state() {
  daemon_alive && return 0
  local stale=""
  for pidfile in /var/run/docker.pid /run/docker/containerd/containerd.pid /run/containerd/containerd.pid; do
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile" 2>/dev/null || true)
      # Stale if that pid is gone or is now another program (pids are reused after a restart).
      comm=$(cat "/proc/${pid:-0}/comm" 2>/dev/null || true)
      if [ -z "$pid" ] || { [ "$comm" != dockerd ] && [ "$comm" != containerd ]; }; then
        log "removing stale $pidfile (pid ${pid:-?} is not a running dockerd or containerd)"
        rm -f "$pidfile"
        stale=1
      fi
    fi
  done
  if [ -n "$stale" ] || [ "${1:-}" = force ]; then
    for dir in /run/docker /run/containerd; do
      [ -d "$dir" ] || continue
      log "clearing stale runtime state in $dir (no dockerd or containerd is running)"
      # Network namespaces left mounted would make rm fail on them: unmount first.
      find "$dir" -depth -type f -path '*/netns/*' -exec umount -l {} \; 2>/dev/null || true
      rm -rf "$dir" 2>/dev/null || log "could not remove all of $dir (continuing)"
    done
    rm -f /var/run/docker.sock
  fi
}

start_dockerd() {
  log "starting dockerd in the background (log: /var/log/dockerd.log)..."
  setsid dockerd >>/var/log/dockerd.log 2>&1 < /dev/null &
  DOCKERD_PID=$!
}

# Wait for the engine: progress every 15 s; stop early if dockerd exits.
wait_for_engine() {
  local limit=$1 waited=0
  while [ "$waited" -lt "$limit" ]; do
    if engine_answers; then
      log "Docker engine is up: $(docker version --format '{{.Server.Version}}')"
      return 0
    fi
    if [ -n "${DOCKERD_PID:-}" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      log "dockerd exited after ${waited} s"
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
    if [ $((waited % 15)) -eq 0 ]; then
      log "still waiting for dockerd (${waited} s of ${limit} s)..."
    fi
  done
  log "dockerd did not answer within ${limit} s"
  return 1
}

show_dockerd_log() {
  log "the last lines of /var/log/dockerd.log:"
  tail -n 25 /var/log/dockerd.log >&2 2>/dev/null || true
}

clear_stale_runtime_state

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  log "starting docker with systemctl..."
  systemctl start docker || true
  wait_for_engine 60 && exit 0
fi

DOCKERD_PID=""
if ! engine_answers; then
  start_dockerd
fi
wait_for_engine 120 && exit 0
show_dockerd_log

# One more try from a clean runtime state, as after a reboot.
if [ -n "$DOCKERD_PID" ]; then
  children=$(pgrep -P "$DOCKERD_PID" 2>/dev/null || true)  # its own containerd
  kill "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  kill -9 "$DOCKERD_PID" $children 2>/dev/null || true
  sleep 1
  clear_stale_runtime_state force
  start_dockerd
  wait_for_engine 120 && exit 0
  show_dockerd_log
fi
log "fix: read /var/log/dockerd.log for why dockerd does not start, then run 'make setup' again"
exit 1
