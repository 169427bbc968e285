#!/bin/sh
# Run the ekey daemon on a simulated Entropy Key, in the foreground, serving
# EGD on 127.0.0.1:8888.
#
#   sh examples/quickstart.sh [DIR]
#
# The simulator listens on a Unix socket in DIR (default: a new temporary
# directory) and adds its serial number and long-term key to DIR/keyring;
# the daemon reads the key through that socket and serves what it verifies.
# From another terminal:
#
#   ekey-egd --connect tcp:127.0.0.1:8888 level
#   ekey-egd --connect tcp:127.0.0.1:8888 get 64 | xxd
#   EKEY_CONTROL=unix:DIR/control.sock ekeyctl list
#
# The simulator is NOT a hardware entropy source: use it to try things out,
# never to feed a real system.  Ctrl-C stops both.
set -eu
# Twisted finds the ekey plugin in twisted/plugins/ on sys.path.  An
# installed ekey (pip install .) brings its plugin, and its compiled health
# tests, with it; only where ekey is not installed is this checkout put on
# sys.path (then the health tests run in pure Python unless built in place:
# python3 setup.py build_ext --inplace).
root=$(cd "$(dirname "$0")/.." && pwd)
if ! (cd / && python3 -c 'import ekey' 2>/dev/null); then
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ekey-demo.XXXXXX")}
port=${EKEY_PORT:-8888}
mkdir -p "$dir"
chmod 700 "$dir"
rm -f "$dir/key.sock"

ekey-sim --listen "unix:$dir/key.sock" --keyring "$dir/keyring" &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do [ -S "$dir/key.sock" ] && break; sleep 0.1; done

echo "ekey quick start: EGD on 127.0.0.1:$port; try: ekey-egd --connect tcp:127.0.0.1:$port get 64 | xxd" >&2
echo "and: EKEY_CONTROL=unix:$dir/control.sock ekeyctl list" >&2
twistd --nodaemon --pidfile= ekey --device "$dir/key.sock" --keyring "$dir/keyring" \
    --port "tcp:$port:interface=127.0.0.1" --control "unix:$dir/control.sock:mode=600"
