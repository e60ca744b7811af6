#!/usr/bin/env bash
# What the test suite needs beyond a build (scripts/install-build-deps.sh), on Debian 12,
# as root. Installed, never started or enabled: the tests run their own instances.
#
#   bpftool, iproute2    inspection (tests list sk_lookup links), `ip netns`, `ss`
#   util-linux           nsenter (tests enter a network namespace without a mount namespace)
#   redis-server         a health-check target speaking a real protocol (tests/test_health.py)
#   procps               pgrep/ps
#   etcd-server          the cluster tests run a real etcd (a fleet's config, SPEC section 8)
#   systemd              systemd-analyze (tests verify packaging/fastproxy.service)
#   openssl              test certificates
#   nftables             fault tests: dropped SYNs and packet loss inside a test netns
set -euo pipefail

PACKAGES=(bpftool iproute2 util-linux redis-server procps etcd-server systemd openssl nftables)
SERVICES=(redis-server etcd)

log() { echo "install-test-deps: $*" >&2; }

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

install_quietly "${PACKAGES[@]}"
[ "$(id -u)" -ne 0 ] || disable_services "${SERVICES[@]}"
