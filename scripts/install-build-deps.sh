#!/usr/bin/env bash
# What building fastproxy from source needs on Debian 12, as root (a wheel's install needs
# none of it: scripts/install-system-deps.sh). Idempotent and quiet on success.
#
#   gcc, libc6-dev, python3-dev  compile the Cython relay
#   libssl-dev                   OpenSSL's headers: the relay terminates TLS (relay/tls.pxi)
#   python3-venv                 the project's .venv
#   python3-bpfcc                bcc: compiles bpf/*.c (into the wheel's images, or at run
#                                time when a source checkout or a changed source needs it)
#   linux-headers-amd64          the kernel headers bcc compiles against
set -euo pipefail

PACKAGES=(gcc libc6-dev libssl-dev python3-dev python3-venv python3-bpfcc linux-headers-amd64)

log() { echo "install-build-deps: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt-get, /lib/modules links)"
  exit 1
fi

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

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
    log "no linux-headers-*-amd64 under /usr/src; bcc cannot compile bpf/"
    return 0
  fi
  mkdir -p "$mod"
  ln -sfn "$amd64" "$mod/build"
  ln -sfn "$common" "$mod/source"
}

install_quietly "${PACKAGES[@]}"
link_kernel_headers
