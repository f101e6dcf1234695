#!/usr/bin/env bash
# Make sure both Compose implementations that `make up` may meet are here, so the tests can
# check compose/docker-compose.yml with each:
#   v1: `docker-compose` 1.29 from Debian bookworm (what a bookworm machine has by default);
#   v2: `docker compose`, the Docker CLI plugin. Debian bookworm has no v2 package (nor its
#       backports); Debian's next release (trixie) has docker-compose 2.x: its plugin binary is
#       taken from that .deb (checked by apt against Debian's signed archive) and put in
#       /usr/local/lib/docker/cli-plugins, leaving bookworm's packages as they are.
# Idempotent and quick when both answer. Without root or apt-get, it says what to install.
set -euo pipefail

log() { printf 'ensure-compose: %s\n' "$*" >&2; }

v1_ok() { command -v docker-compose >/dev/null 2>&1 && docker-compose version --short 2>/dev/null | grep -q '^1\.'; }
v2_ok() { command -v docker >/dev/null 2>&1 && docker compose version --short 2>/dev/null | grep -Eq '^v?2\.'; }

if v1_ok && v2_ok; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  v1_ok || log "Compose v1 is missing: install Debian's docker-compose (sudo apt-get install docker-compose), or run 'sudo make setup'"
  v2_ok || log "Compose v2 is missing: install the Docker Compose plugin (docker-compose-plugin, or Debian trixie's docker-compose), or run 'sudo make setup'"
  log "(only the compose tests and 'make up' need them)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive

if ! v1_ok; then
  log "installing Compose v1 (Debian bookworm's docker-compose)..."
  apt-get update -qq
  apt-get install -y -qq docker-compose >/dev/null
fi

if ! v2_ok; then
  log "installing Compose v2 as a Docker CLI plugin (from Debian trixie's docker-compose .deb)..."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
  chown -R _apt "$work" 2>/dev/null || true
  apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -qq)
  apt-get "${apt_opts[@]}" update
  (cd "$work" && apt-get "${apt_opts[@]}" download docker-compose)
  dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
  install -D -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
fi

v1_ok || { log "Compose v1 still does not answer (docker-compose version)"; exit 1; }
v2_ok || { log "Compose v2 still does not answer (docker compose version)"; exit 1; }
log "Compose v1 $(docker-compose version --short) and v2 $(docker compose version --short) are ready"
