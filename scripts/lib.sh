# Shared by the install scripts (source it after defining log()).

# Runs a command with its output kept aside, shown only if it fails (apt and debconf are
# chatty even with -qq: "delaying package configuration", invoke-rc.d policy notes).
quietly() {
  local out rc=0
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "$out" >&2; log "failed ($rc): $*"; }
  rm -f "$out"
  return "$rc"
}

# Installs Debian packages (as root) with their services neither started nor enabled: a
# policy-rc.d answering 101 forbids starting them during the install, the way container
# images do (ours is removed again afterwards), and disable_services undoes the
# enablement the packages' scripts leave behind. Only missing packages are installed; an
# apt-get update only when there are no package lists, or when installing from them fails.
install_quietly() {
  local -a missing=()
  local p status
  for p in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]}; run as root to install them"
    return 1
  fi
  local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  # noninteractive: debconf questions ("start iperf3 as a daemon?") take their default, no.
  export DEBIAN_FRONTEND=noninteractive
  local -a apt=(apt-get -q -o Dpkg::Use-Pty=0 -y --no-install-recommends install "${missing[@]}")
  log "installing ${missing[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    { quietly apt-get -q update && quietly "${apt[@]}"; } || rc=$?
  elif ! "${apt[@]}" >/dev/null 2>&1; then
    log "refreshing package lists and retrying"
    { quietly apt-get -q update && quietly "${apt[@]}"; } || rc=$?
  fi
  [ "$own_policy" -eq 0 ] || rm -f "$policy"
  return "$rc"
}

# Leaves each named service disabled, for systemd (the units' wants links) and for SysV
# init (S links become K links), whether or not systemd runs: deb-systemd-helper and
# update-rc.d only edit links. Quiet and idempotent: a disabled service is left alone.
disable_services() {
  local unit
  for unit in "$@"; do
    if compgen -G "/etc/systemd/system/*.wants/$unit.service" >/dev/null; then
      deb-systemd-helper disable "$unit.service" >/dev/null 2>&1 ||
        rm -f /etc/systemd/system/*.wants/"$unit".service
      log "disabled the $unit service (the tests and benchmarks start their own)"
    fi
    if compgen -G "/etc/rc[2-5].d/S??$unit" >/dev/null; then
      update-rc.d "$unit" disable >/dev/null 2>&1 || rm -f /etc/rc[2-5].d/S??"$unit"
    fi
  done
}
