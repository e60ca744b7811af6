#!/usr/bin/env bash
# Packages the benchmarks in benchmarks/ need, on Debian 12, as root. Idempotent: when
# everything is present it installs nothing, runs no apt-get update and says nothing.
#
#   iperf3      bulk throughput load (client and server)
#   haproxy     the reference contender (HAProxy 2.6 in TCP mode, splice and not)
#   wrk         HTTP load: connections per second and keep-alive request latency
#   nginx       the HTTP backend behind each proxy for wrk (`return 200`), and a peer
#   libnginx-mod-stream  nginx's TCP proxy (`stream`), the peer
#   gcc libc6-dev  to build benchmarks/openloop.c (the open-loop load generator)
#   util-linux  taskset, to pin the client, the server and the proxy to CPUs
#   procps      pgrep/ps
#   iproute2    ss: TIME_WAIT sockets after the churn load
# and, into the project's venv (.venv, or $1): uvloop (a contender's event loop) and
# matplotlib (the summary chart).
set -euo pipefail

PACKAGES=(iperf3 haproxy wrk nginx libnginx-mod-stream gcc libc6-dev util-linux procps iproute2)
PYTHON=${1:-.venv/bin/python}

log() { echo "install-bench-deps: $*" >&2; }

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

install_packages() {
  local -a missing=()
  local p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]}; run as root to install them"
    return 1
  fi
  # The packages' own services (nginx on port 80, an iperf3 daemon) must not start: the
  # benchmarks run their own instances. A policy-rc.d answering 101 forbids it, the way
  # container images do; ours is removed again afterwards.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  # noninteractive: iperf3's debconf question ("start as a daemon?") takes its default, no.
  export DEBIAN_FRONTEND=noninteractive
  local -a apt=(apt-get -q -o Dpkg::Use-Pty=0 -y --no-install-recommends install "${missing[@]}")
  log "installing ${missing[*]}"
  local rc=0
  # apt-get update only when a package is missing: first if there are no package lists at
  # all, else only if installing from the lists we have fails (stale lists).
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    quietly apt-get -q update && quietly "${apt[@]}" || rc=$?
  elif ! "${apt[@]}" >/dev/null 2>&1; then
    log "refreshing package lists and retrying"
    { quietly apt-get -q update && quietly "${apt[@]}"; } || rc=$?
  fi
  [ "$own_policy" -eq 0 ] || rm -f "$policy"
  return "$rc"
}

install_python() {
  [ -x "$PYTHON" ] || { log "no $PYTHON: run 'make setup' first"; return 1; }
  "$PYTHON" -c 'import uvloop, matplotlib' 2>/dev/null && return 0
  log "installing uvloop and matplotlib into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  quietly "$PYTHON" -m pip install -q uvloop matplotlib
}

# build/openloop, rebuilt when its source is newer
build_openloop() {
  local root src out
  root=$(cd "$(dirname "$0")/.." && pwd)
  src=$root/benchmarks/openloop.c out=$root/build/openloop
  [ "$out" -nt "$src" ] && return 0
  mkdir -p "$root/build"
  cc -O2 -Wall -Wextra -o "$out" "$src"
}

install_packages
install_python
build_openloop
