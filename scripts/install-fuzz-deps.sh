#!/usr/bin/env bash
# clang with libFuzzer and AddressSanitizer for the parser fuzzers (make fuzz-parsers,
# fuzz/README.md), as root on Debian 12. Idempotent and quiet when already installed.
set -euo pipefail

PACKAGES=(clang libclang-rt-14-dev)

log() { echo "install-fuzz-deps: $*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root to install: ${missing[*]}"
  exit 1
fi
log "installing ${missing[*]}"
# Wait for another apt run rather than fail on its lock.
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
  { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
