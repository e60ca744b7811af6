#!/usr/bin/env bash
# Packages the benchmarks in benchmarks/ need, on Debian 12, as root. Idempotent: when
# everything is present it installs nothing, runs no apt-get update and says nothing.
# No service is started or left enabled.
#
#   iperf3      bulk throughput load (client and server)
#   haproxy     the reference contender (HAProxy 2.6 in TCP mode, splice and not)
#   wrk         HTTP load: connections per second and keep-alive request latency
#   nginx       the HTTP backend behind each proxy for wrk (`return 200`), and a peer
#   libnginx-mod-stream  nginx's TCP proxy (`stream`), the peer
#   gcc libc6-dev  to build benchmarks/openloop.c, portspread.c and tlsload.c (load
#               generators; tlsload links OpenSSL: libssl-dev, from install-build-deps.sh)
#   util-linux  taskset, to pin the client, the server and the proxy to CPUs
#   procps      pgrep/ps
#   iproute2    ss: TIME_WAIT sockets after the churn load
#   linux-perf strace tcpdump  the profiles (benchmarks/profile_relay.py: perf stat and
#               record; splice_vs_copy.py: perf, segment sizes captured with tcpdump)
# and, into the project's venv (.venv, or $1): uvloop (a contender's event loop) and
# matplotlib (the summary chart).
set -euo pipefail

PACKAGES=(iperf3 haproxy wrk nginx libnginx-mod-stream gcc libc6-dev util-linux procps iproute2
  linux-perf strace tcpdump)
PYTHON=${1:-.venv/bin/python}

log() { echo "install-bench-deps: $*" >&2; }

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

install_python() {
  [ -x "$PYTHON" ] || { log "no $PYTHON: run 'make setup' first"; return 1; }
  "$PYTHON" -c 'import uvloop, matplotlib' 2>/dev/null && return 0
  log "installing uvloop and matplotlib into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  quietly "$PYTHON" -m pip install -q uvloop matplotlib
}

# build/openloop, build/portspread and build/tlsload (the load generators), rebuilt when
# their source is newer (bench_portspread.py and bench_tlsload.py also build theirs on
# first use)
build_generators() {
  local root name src out libs
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$root/build"
  for name in openloop portspread tlsload; do
    src=$root/benchmarks/$name.c out=$root/build/$name libs=()
    [ "$name" = tlsload ] && libs=(-lssl -lcrypto)
    [ "$out" -nt "$src" ] || cc -O2 -Wall -Wextra -o "$out" "$src" "${libs[@]}"
  done
}

install_quietly "${PACKAGES[@]}"
# Their packages enable nginx, haproxy (and iperf3's daemon if asked): the benchmarks run
# their own instances, nothing is left to start at boot.
[ "$(id -u)" -ne 0 ] || disable_services nginx haproxy iperf3
install_python
build_generators
