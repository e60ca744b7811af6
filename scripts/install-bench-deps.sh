#!/usr/bin/env bash
# Packages the benchmarks in benchmarks/ need, on Debian 12, as root. Idempotent: when
# everything is present it installs nothing, runs no apt-get update and says nothing.
#
#   iperf3      bulk throughput load (client and server)
#   haproxy     the reference contender (HAProxy 2.6 in TCP mode with splice)
#   util-linux  taskset, to pin the client, the server and the proxy to CPUs
set -euo pipefail

PACKAGES=(iperf3 haproxy util-linux)

log() { echo "install-bench-deps: $*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  log "missing ${missing[*]}; run as root to install them"
  exit 1
fi

# Runs a command with its output kept aside, shown only if it fails.
quietly() {
  local out rc=0
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "$out" >&2; log "failed ($rc): $*"; }
  rm -f "$out"
  return "$rc"
}

# noninteractive: iperf3's debconf question ("start as a daemon?") takes its default, no.
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -q -o Dpkg::Use-Pty=0 -y --no-install-recommends install "${missing[@]}")
log "installing ${missing[*]}"
# apt-get update only when a package is missing: first if there are no package lists at
# all, else only if installing from the lists we have fails (stale lists).
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  quietly apt-get -q update
elif "${apt[@]}" >/dev/null 2>&1; then
  exit 0
else
  log "refreshing package lists and retrying"
  quietly apt-get -q update
fi
quietly "${apt[@]}"
