#!/bin/sh
# Write the configuration oi generated, check it, then run Squid in the foreground.
set -eu
conf=/tmp/squid.conf
printf '%s' "${OI_SQUID_CONF:?oi passes the configuration in OI_SQUID_CONF}" | base64 -d > "$conf"
squid -k parse -f "$conf" >/dev/null 2>&1 || { squid -k parse -f "$conf"; exit 2; }
exec squid -N -f "$conf"
