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
