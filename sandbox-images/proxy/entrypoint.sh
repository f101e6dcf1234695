#!/bin/sh
# Write the configuration oi generated, check it, start the TCP forwarders, then run Squid in
# the foreground.
set -eu
conf=/tmp/squid.conf
printf '%s' "${OI_SQUID_CONF:?oi passes the configuration in OI_SQUID_CONF}" | base64 -d > "$conf"
squid -k parse -f "$conf" >/dev/null 2>&1 || { squid -k parse -f "$conf"; exit 2; }
# HOST:PORT entries: listen on PORT at this proxy's address on the session's network only, and
# hand each connection to Squid as CONNECT HOST:PORT (Squid resolves HOST, checks where it
# points and logs the decision; a refusal closes the connection).
for target in ${OI_TCP_FORWARDS:-}; do
  host=${target%:*}
  port=${target##*:}
  socat -d -d -lpoi-forward -lu \
    "TCP-LISTEN:$port,bind=${OI_FORWARD_ADDRESS:?},fork,reuseaddr" \
    "PROXY:127.0.0.1:$host:$port,proxyport=3128" &
done
exec squid -N -f "$conf"
