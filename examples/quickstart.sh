#!/bin/sh
# Run the ekey daemon on a simulated Entropy Key, in the foreground.
#
#   sh examples/quickstart.sh [DIR]
#
# The simulator listens on a Unix socket in DIR (default: a new temporary
# directory) and adds its serial number and long-term key to DIR/keyring;
# the daemon reads the key through that socket and appends verified entropy
# to DIR/entropy.  The simulator is NOT a hardware entropy source: use it to
# try things out, never to feed a real system.  Ctrl-C stops both.
set -eu
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ekey-demo.XXXXXX")}
mkdir -p "$dir"
chmod 700 "$dir"
rm -f "$dir/key.sock"

ekey-sim --listen "unix:$dir/key.sock" --keyring "$dir/keyring" --seed quickstart &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do [ -S "$dir/key.sock" ] && break; sleep 0.1; done

echo "ekey quick start: entropy goes to $dir/entropy (try: xxd $dir/entropy | tail)" >&2
twistd --nodaemon --pidfile= ekey --device "$dir/key.sock" --keyring "$dir/keyring" \
    --output-file "$dir/entropy"
