#!/usr/bin/env bash
# bcc is Debian's python3-bpfcc (the PyPI "bcc" is an unrelated project). It is pure
# Python over libbcc.so, so we link that one package into our venv rather than
# exposing all of /usr/lib/python3/dist-packages.
set -euo pipefail
py=${1:-.venv/bin/python}
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
src=/usr/lib/python3/dist-packages/bcc
if [ -d "$src" ]; then
  ln -sfn "$src" "$site/bcc"
  "$py" -c 'import bcc' && echo "bcc: linked into $site"
else
  echo "bcc: $src not found (python3-bpfcc not installed); bpf steering will be unavailable" >&2
fi
