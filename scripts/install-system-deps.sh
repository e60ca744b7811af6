#!/usr/bin/env bash
# What fastproxy needs at run time on Debian 12, as root: Python with venv (to install the
# wheel into), and bpffs mounted for bpf steering. The wheel carries the compiled BPF
# programs, so neither bcc nor kernel headers are needed (scripts/install-build-deps.sh
# has them, for building from source). Installs no service. Idempotent and quiet on
# success: a second run installs nothing and runs no apt-get update.
#
#   python3 (3.10 or newer), python3-venv
set -euo pipefail

PACKAGES=(python3 python3-venv)

log() { echo "install-system-deps: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt-get, mounting bpffs)"
  exit 1
fi

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

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

install_quietly "${PACKAGES[@]}"
mount_bpffs
