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
  # networked tiers), keeping any other settings the file already holds. Returns 0 if changed.
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
wanted = {
    "runsc": {"path": runsc, "runtimeArgs": ["--network=none"]},
    "runsc-host": {"path": runsc, "runtimeArgs": ["--network=host"]},
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

# A pid file left by a dockerd that was killed stops a new one from starting ("pid file found").
for pidfile in /var/run/docker.pid /run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      log "removing stale $pidfile (pid ${pid:-?} is not alive)"
      rm -f "$pidfile"
    fi
  fi
done

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  log "starting docker with systemctl..."
  systemctl start docker || true
fi
if ! engine_answers; then
  log "starting dockerd in the background (log: /var/log/dockerd.log)..."
  setsid dockerd >>/var/log/dockerd.log 2>&1 < /dev/null &
fi

for _ in $(seq 1 60); do
  if engine_answers; then
    log "Docker engine is up: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
exit 1
