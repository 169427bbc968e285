#!/bin/bash
# Build the whole bastion chain on this one machine, on loopback, and read
# from its far end:
#
#   ekey-sim (the "key")                       unix socket
#     -> key host   twistd ekey --device ...   mtls: on 127.0.0.1:P1
#     -> bastion    twistd ekey --upstream tls:keyhost.example.net...
#                                              mtls: on 127.0.0.1:P2
#     -> relay      twistd ekey --upstream tls:bastion.example.net...
#                                              unix: socket and tcp: on 127.0.0.1:P3
#     -> ekey-egd get 64
#
#   bash examples/bastion/run-local-demo.sh        (EKEY_DEMO_KEEP=1 keeps DIR)
#
# The certificates are the real chain's (make-certs.sh: keyhost.example.net,
# bastion.example.net, ...), so every name check is the one production does.
# Those names do not resolve here, so each tls: upstream says which name to
# check (the host part, keyhost.example.net) and, with endpoint=, where to
# connect (tcp:127.0.0.1:P1); in production leave endpoint= out.
#
# The simulator is NOT a hardware entropy source: this is a demonstration.
# Every process is started here, stopped by its pid when the script ends
# (normally, on error or on Ctrl-C), and every wait has a time limit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# Twisted finds the ekey and mtls: plugins in twisted/plugins/ beside the
# package, so the checkout must be on sys.path.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

dir=$(mktemp -d "${TMPDIR:-/tmp}/ekey-bastion.XXXXXX")
chmod 700 "$dir"
pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "--- demo failed (status $status); logs:" >&2
        for log in "$dir"/*.log; do
            [ -e "$log" ] || continue
            echo "--- $log (tail)" >&2
            tail -n 15 "$log" >&2
        done
    fi
    if [ "${EKEY_DEMO_KEEP:-0}" = 1 ]; then
        echo "kept $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n== %s\n' "$*"; }

freePort() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait (at most 20 s) until something listens on 127.0.0.1:$1, or the
# process $2 dies.
waitTCP() {
    local port=$1 pid=$2 what=$3
    for _ in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$what exited before listening" >&2; return 1
        fi
        if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "$what: nothing listening on 127.0.0.1:$port after 20 s" >&2
    return 1
}

waitSocket() {
    local path=$1 pid=$2 what=$3
    for _ in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$what exited before listening" >&2; return 1
        fi
        [ -S "$path" ] && return 0
        sleep 0.1
    done
    echo "$what: no socket at $path after 20 s" >&2
    return 1
}

# Wait (at most 20 s) until a log says something.
waitLog() {
    local log=$1 pattern=$2
    for _ in $(seq 200); do
        grep -q -- "$pattern" "$log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no '$pattern' in $log after 20 s" >&2
    return 1
}

p1=$(freePort); p2=$(freePort); p3=$(freePort)
while [ "$p2" = "$p1" ]; do p2=$(freePort); done
while [ "$p3" = "$p1" ] || [ "$p3" = "$p2" ]; do p3=$(freePort); done

step "certificates (make-certs.sh), one bundle per host, in $dir/pki"
sh "$here/make-certs.sh" "$dir/pki" | sed -n '1,2p'
ls "$dir/pki"
K="$dir/pki/keyhost.example.net"
B="$dir/pki/bastion.example.net"
R="$dir/pki/relay.internal.example.net"
C="$dir/pki/client.example.net"

step "the key: ekey-sim on unix:$dir/key.sock (a SIMULATOR, not entropy)"
ekey-sim --listen "unix:$dir/key.sock" --keyring "$dir/keyring" >"$dir/sim.log" 2>&1 &
sim=$!; pids+=("$sim")
waitSocket "$dir/key.sock" "$sim" ekey-sim

step "key host: serves the key over mtls: on 127.0.0.1:$p1"
keyhostCmd=(twistd --nodaemon --pidfile= --logfile="$dir/keyhost.log" ekey --control "unix:$dir/keyhost.control:mode=600"
    --device "$dir/key.sock" --keyring "$dir/keyring"
    --port "mtls:$p1:certKey=$K/keyhost.example.net.crt:privateKey=$K/keyhost.example.net.key:caCerts=$K/ca.pem:interface=127.0.0.1")
echo "${keyhostCmd[*]}"
"${keyhostCmd[@]}" &
keyhost=$!; pids+=("$keyhost")
waitTCP "$p1" "$keyhost" "key host"

step "bastion: pulls from the key host over TLS with its own certificate, serves mtls: on 127.0.0.1:$p2"
bastionCmd=(twistd --nodaemon --pidfile= --logfile="$dir/bastion.log" ekey --control "unix:$dir/bastion.control:mode=600"
    --upstream "tls:keyhost.example.net:$p1:trustRoots=$B:certificate=$B/bastion.example.net.crt:privateKey=$B/bastion.example.net.key:endpoint=tcp\\:127.0.0.1\\:$p1"
    --pool-size 262144 --low-water 16384 --high-water 65536
    --port "mtls:$p2:certKey=$B/bastion.example.net.crt:privateKey=$B/bastion.example.net.key:caCerts=$B/ca.pem:interface=127.0.0.1")
echo "${bastionCmd[*]}"
"${bastionCmd[@]}" &
bastion=$!; pids+=("$bastion")
waitTCP "$p2" "$bastion" bastion

waitLog "$dir/bastion.log" "Upstream tls:keyhost.example.net.* connected"

step "a client with a certificate reads from the bastion directly over TLS"
ekey-egd --timeout 10 --connect "tls:bastion.example.net:$p2:trustRoots=$C:certificate=$C/client.example.net.crt:privateKey=$C/client.example.net.key:endpoint=tcp\\:127.0.0.1\\:$p2" get 32 | od -An -tx1

step "refused: a client without a certificate (the mtls: listener wants one)"
if ekey-egd --timeout 5 --connect "tls:bastion.example.net:$p2:trustRoots=$C:endpoint=tcp\\:127.0.0.1\\:$p2" get 32 >/dev/null 2>"$dir/err"; then
    echo "UNEXPECTED: the bastion served a client without a certificate" >&2; exit 1
fi
echo "refused as it should be: $(head -c 300 "$dir/err")"

step "refused: the bastion's address answered by a certificate for another name"
if ekey-egd --timeout 5 --connect "tls:keyhost.example.net:$p2:trustRoots=$C:certificate=$C/client.example.net.crt:privateKey=$C/client.example.net.key:endpoint=tcp\\:127.0.0.1\\:$p2" get 32 >/dev/null 2>"$dir/err"; then
    echo "UNEXPECTED: a certificate for bastion.example.net was accepted as keyhost.example.net" >&2; exit 1
fi
echo "refused as it should be: $(head -c 300 "$dir/err")"

step "internal relay: pulls from the bastion over TLS, serves plain EGD on unix:$dir/egd.sock and tcp:127.0.0.1:$p3"
relayCmd=(twistd --nodaemon --pidfile= --logfile="$dir/relay.log" ekey --control "unix:$dir/relay.control:mode=600"
    --upstream "tls:bastion.example.net:$p2:trustRoots=$R:certificate=$R/relay.internal.example.net.crt:privateKey=$R/relay.internal.example.net.key:endpoint=tcp\\:127.0.0.1\\:$p2"
    --pool-size 65536 --low-water 4096 --high-water 16384
    --port "unix:$dir/egd.sock:mode=660" --port "tcp:$p3:interface=127.0.0.1")
echo "${relayCmd[*]}"
"${relayCmd[@]}" &
relay=$!; pids+=("$relay")
waitSocket "$dir/egd.sock" "$relay" relay
waitLog "$dir/relay.log" "Upstream tls:bastion.example.net.* connected"
grep -h "Upstream .* connected" "$dir/relay.log" | sed 's/^[^[]*\[/[/'

step "a local VM's view: ekey-egd --connect unix:$dir/egd.sock get 64"
ekey-egd --timeout 20 --connect "unix:$dir/egd.sock" get 64 >"$dir/out.bin"
od -An -tx1 "$dir/out.bin"
bytes=$(wc -c <"$dir/out.bin")
echo "read $bytes bytes through key host -> bastion -> relay"
[ "$bytes" -eq 64 ]

step "the key host goes away: the bastion says so and serves only what its pool holds"
kill "$keyhost"
waitLog "$dir/bastion.log" "Every upstream is down"
grep -h "Every upstream is down" "$dir/bastion.log" | sed 's/^[^[]*\[/[/'
ekey-egd --timeout 10 --connect "tcp:127.0.0.1:$p3" level | sed 's/^/relay level (bits): /'

step "done: the chain worked; stopping everything"
