#!/bin/sh
# Make the certificate authority and the per-host certificates of the
# bastion chain, with `python3 -m ekey.cli.certs`, and sort them into one bundle
# per host.
#
#   sh examples/bastion/make-certs.sh [OUT]          (default OUT: ./pki)
#
# Run it on an offline machine (or at least not on any of the hosts). It
# writes:
#
#   OUT/ca/ca.pem, OUT/ca/ca.key    the CA. ca.key NEVER leaves this machine:
#                                   whoever holds it can mint certificates
#                                   that every listener in the chain accepts.
#   OUT/HOST/ca.pem                 for each host, the bundle to copy to that
#   OUT/HOST/HOST.crt               host's /etc/ekey/tls/ (owner root, group
#   OUT/HOST/HOST.key               ekey, mode 0640 for the .key)
#
# Hosts (override with EKEY_HOSTS="name1 name2 ..."):
#
#   keyhost.example.net         the host with the Entropy Key; mtls: server
#   bastion.example.net         client of the key host, mtls: server
#   relay.internal.example.net  client of the bastion; serves local VMs
#   client.example.net          an ekey-egd client (monitoring, admin) that
#                               reads from the bastion over TLS
#   vmhost.internal.example.net a hypervisor whose QEMU reads from the relay
#                               over TLS (only if the VMs are not on the
#                               relay's own host)
#
# Every certificate names its host as a DNS subject alternative name and is
# good for both TLS server and client use. Downstreams check the upstream's
# name (service_identity); mtls: listeners check only that a client's
# certificate chains to ca.pem. See doc/relays.md.
#
# An existing CA is reused (ekey.cli.certs refuses to replace one), so the script
# can be run again to add hosts; an existing host bundle is left alone.
set -eu

out=${1:-./pki}
hosts=${EKEY_HOSTS:-"keyhost.example.net bastion.example.net relay.internal.example.net client.example.net vmhost.internal.example.net"}
python=${PYTHON:-python3}

umask 077
mkdir -p "$out/ca"
if [ ! -e "$out/ca/ca.key" ]; then
    "$python" -m ekey.cli.certs --out "$out/ca" ca --name "ekey relay CA"
fi

for host in $hosts; do
    bundle="$out/$host"
    if [ -e "$bundle/$host.key" ]; then
        echo "$host: $bundle exists, left alone"
        continue
    fi
    mkdir -p "$bundle"
    "$python" -m ekey.cli.certs --out "$out/ca" host "$host" >/dev/null
    # Move (not copy) the key, so that exactly one copy of it exists.
    mv "$out/ca/$host.key" "$bundle/$host.key"
    mv "$out/ca/$host.crt" "$bundle/$host.crt"
    cp "$out/ca/ca.pem" "$bundle/ca.pem"
    chmod 0644 "$bundle/ca.pem" "$bundle/$host.crt"
    chmod 0600 "$bundle/$host.key"
done

cat <<TEXT

Certificates are in $out. Copy each bundle to its host, then remove it here:

TEXT
for host in $hosts; do
    echo "  $out/$host/{ca.pem,$host.crt,$host.key}  ->  $host:/etc/ekey/tls/"
done
cat <<TEXT

  $out/ca/ca.key stays here, offline. On each host:

    install -d -o root -g ekey -m 0750 /etc/ekey/tls
    install -o root -g ekey -m 0644 ca.pem HOST.crt /etc/ekey/tls/
    install -o root -g ekey -m 0640 HOST.key /etc/ekey/tls/

  /etc/ekey/tls/ then holds exactly one *.pem file, ca.pem, so it is also
  the trustRoots= directory of the host's tls: upstream.
TEXT
