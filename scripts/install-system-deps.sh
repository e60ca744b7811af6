#!/usr/bin/env bash
# System dependencies for fastproxy on Debian 12, as root. Idempotent and quiet on success:
# a second run installs nothing, runs no apt-get update, and takes well under a second.
#
#   python3-bpfcc        bcc (compiles and loads bpf/steer.c at run time)
#   linux-headers-amd64  kernel headers bcc compiles against
#   bpftool, iproute2    inspection (tests list sk_lookup links), `ip netns`, `ss`
#   util-linux           nsenter (tests enter a network namespace without a mount namespace)
#   redis-server, procps demo backend, pgrep/ps
#   etcd-server          the cluster tests run a real etcd (a fleet's config, SPEC section 8)
#   systemd              systemd-analyze (tests verify packaging/fastproxy.service)
#   nftables             fault tests: dropped SYNs and packet loss inside a test netns
set -euo pipefail

PACKAGES=(python3-bpfcc bpftool iproute2 linux-headers-amd64 util-linux redis-server procps etcd-server
  systemd openssl nftables)

log() { echo "install-system-deps: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt-get, /lib/modules links, mounting bpffs)"
  exit 1
fi

missing_packages() {
  local p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || echo "$p"
  done
}

# apt-get update only when something must be installed and the package lists are absent
# or older than a day; if the install still fails (a stale list naming a version the
# mirror dropped), refresh once and retry.
apt_lists_fresh() {
  local lists=/var/lib/apt/lists
  compgen -G "$lists/*_Packages*" >/dev/null &&
    [ -z "$(find "$lists" -maxdepth 1 -name '*_Packages*' -mmin +1440 -print -quit)" ]
}

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

install_packages() {
  local -a missing
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  local -a apt=(apt-get -q -o Dpkg::Use-Pty=0 -y --no-install-recommends)
  apt_lists_fresh || quietly apt-get -q update
  if ! quietly "${apt[@]}" install "${missing[@]}"; then
    log "refreshing package lists and retrying"
    quietly apt-get -q update
    quietly "${apt[@]}" install "${missing[@]}"
  fi
}

# bcc builds against /lib/modules/$(uname -r)/build. Kernels that ship no headers (cloud
# and VM kernels, this CI) get links to Debian's newest headers: sk_lookup programs use
# only the stable UAPI (struct bpf_sk_lookup, helpers), so another version's headers work.
link_kernel_headers() {
  local mod="/lib/modules/$(uname -r)" amd64 common
  if [ -e "$mod/build/Makefile" ] &&
    { [ -e "$mod/build/include/linux/kconfig.h" ] || [ -e "$mod/source/include/linux/kconfig.h" ]; }; then
    return 0
  fi
  amd64=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' | sort -V | tail -n 1)
  common=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-common' | sort -V | tail -n 1)
  if [ -z "$amd64" ] || [ -z "$common" ]; then
    log "no linux-headers-*-amd64 under /usr/src; bpf steering will be unavailable"
    return 0
  fi
  mkdir -p "$mod"
  ln -sfn "$amd64" "$mod/build"
  ln -sfn "$common" "$mod/source"
}

# Steering pins its program, maps and link under /sys/fs/bpf; bpffs is not mounted at boot
# on every machine. Mode 0700: only root may create pins (some systems mount it 1777, where
# any user could take /sys/fs/bpf/fastproxy first).
mount_bpffs() {
  [ -d /sys/fs/bpf ] || return 0
  if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = "bpf_fs" ]; then
    (((8#$(stat -c %a /sys/fs/bpf) & 8#077) == 0)) || chmod 0700 /sys/fs/bpf
    return 0
  fi
  mount -t bpf -o mode=0700 bpf /sys/fs/bpf || log "could not mount bpffs on /sys/fs/bpf"
}

install_packages
link_kernel_headers
mount_bpffs
