#!/usr/bin/env bash
# Checks the two Debian packages as an operator would meet them: lintian, install, what the
# install put where (binary, user, directories, conffile, systemd unit), a short start of
# the agent and of the license server under the packages' own configs as their users,
# remove (state kept), purge (state gone). Run as root on a Debian host, with the .deb files as arguments:
#
#   bash deploy/debian/check-packages.sh target/debian/tollgate_*.deb \
#       target/debian/tollgate-license-server_*.deb
#
# What it cannot test without systemd as PID 1 (a container, most CI): that systemd starts
# the unit, its sandbox, the watchdog and the notify handshake for real. It says so below,
# and checks instead what can be checked: `systemd-analyze verify` of the installed units,
# and the sd_notify protocol itself in tests/systemd_notify.rs.
set -euo pipefail

agent_deb=$1
server_deb=$2
fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
say() { echo "--- $*"; }

say "lintian (every remaining tag is overridden with its reason in deploy/debian/*/lintian-overrides)"
lintian --fail-on error,warning "$agent_deb" "$server_deb"

cleanup() {
  rc=$?
  if [ "$rc" -ne 0 ]; then
    for pid in ${agent_pid:-} ${ls_pid:-}; do kill "$pid" 2>/dev/null || true; done
    echo "check-packages: purging what this run installed" >&2
    dpkg --purge tollgate tollgate-license-server >/dev/null 2>&1 || true
  fi
  exit "$rc"
}

say "no earlier install"
if dpkg -s tollgate >/dev/null 2>&1 || dpkg -s tollgate-license-server >/dev/null 2>&1; then
  fail "tollgate packages are already installed here; remove them first"
fi

trap cleanup EXIT
say "dpkg -i"
dpkg -i "$agent_deb" "$server_deb"
tollgate --version
tollgate-license-server --version
# The package's name for the full binary is `tollgate license-server`.
tollgate-license-server --help | grep -q "license server" || fail "tollgate-license-server --help"
# The agent package is built without the license server (feature `license-server` off).
rc=0; tollgate license-server --help >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "tollgate license-server in the agent package: exit $rc, expected 2"

say "users, directories, conffiles, units"
getent passwd tollgate | grep -q ':/var/lib/tollgate:/usr/sbin/nologin$' || fail "user tollgate"
getent passwd tollgate-license-server | grep -q ':/usr/sbin/nologin$' || fail "user tollgate-license-server"
[ "$(stat -c '%U:%G %a' /var/lib/tollgate)" = "tollgate:tollgate 750" ] || fail "/var/lib/tollgate: $(stat -c '%U:%G %a' /var/lib/tollgate)"
[ "$(stat -c '%U:%G %a' /var/lib/tollgate-license-server)" = "tollgate-license-server:tollgate-license-server 700" ] \
  || fail "/var/lib/tollgate-license-server"
[ "$(stat -c '%U %a' /etc/tollgate-license-server/signing-keys)" = "tollgate-license-server 700" ] \
  || fail "signing-keys dir"
grep -qx /etc/tollgate/agent.toml /var/lib/dpkg/info/tollgate.conffiles || fail "agent.toml is not a conffile"
grep -qx /etc/tollgate-license-server/license-server.toml /var/lib/dpkg/info/tollgate-license-server.conffiles \
  || fail "license-server.toml is not a conffile"
for unit in tollgate tollgate-license-server; do
  f=/usr/lib/systemd/system/$unit.service
  [ -f "$f" ] || fail "$f missing"
  for key in Type=notify WatchdogSec= LimitNOFILE= NoNewPrivileges=true ProtectSystem=strict \
             StateDirectory= User=; do
    grep -q "^$key" "$f" || fail "$f lacks $key"
  done
done
# Enabled at install (a symlink, made by deb-systemd-helper even without a running systemd);
# the license server is not: it needs its certificate and keys first.
[ -L /etc/systemd/system/multi-user.target.wants/tollgate.service ] || fail "tollgate.service not enabled"
[ ! -e /etc/systemd/system/multi-user.target.wants/tollgate-license-server.service ] \
  || fail "tollgate-license-server.service enabled before it is configured"

if command -v systemd-analyze >/dev/null 2>&1; then
  say "systemd-analyze verify"
  # It exits 0 on unknown keys and bad values (it only warns): any output is a failure.
  verify=$(systemd-analyze verify /usr/lib/systemd/system/tollgate.service \
    /usr/lib/systemd/system/tollgate-license-server.service 2>&1) || fail "systemd-analyze verify: $verify"
  [ -z "$verify" ] || fail "systemd-analyze verify: $verify"
else
  echo "*** systemd-analyze not installed: the unit files were not verified"
fi
if [ ! -d /run/systemd/system ]; then
  echo "*** NOTE: systemd is not PID 1 here: the units were NOT started by systemd (no"
  echo "*** sandbox, watchdog or notify handshake tested by this script). The agent is started"
  echo "*** below by hand, as the unit would start it; tests/systemd_notify.rs plays the"
  echo "*** notify socket and watchdog against the real binary."
fi

say "a short agent start under the package's config, as the tollgate user"
# The unit's ExecStart, as its user. The packaged config's defaults: admin on 127.0.0.1:7173.
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/tollgate.service)
setpriv --reuid=tollgate --regid=tollgate --init-groups $exec_start 2>/tmp/tollgate-pkg-agent.log &
agent_pid=$!
ok=0
for _ in $(seq 1 200); do
  if curl -fsS http://127.0.0.1:7173/healthz >/dev/null 2>&1; then ok=1; break; fi
  kill -0 "$agent_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$ok" = 1 ] || { cat /tmp/tollgate-pkg-agent.log; fail "the packaged agent did not answer /healthz"; }
curl -fsS http://127.0.0.1:7173/api/v1/usage | grep -q '"calls"' || fail "/api/v1/usage"
tollgate status >/dev/null || fail "tollgate status against the packaged agent"
[ -S /var/lib/tollgate/events.sock ] || fail "no event socket in /var/lib/tollgate"
kill -TERM "$agent_pid"
wait "$agent_pid" || { cat /tmp/tollgate-pkg-agent.log; fail "agent exit status after SIGTERM"; }
[ "$(stat -c %U /var/lib/tollgate/usage.snapshot)" = tollgate ] || fail "snapshot not owned by tollgate"
grep -q 'agent ready' /tmp/tollgate-pkg-agent.log || fail "no 'agent ready' line"
if grep -q $'\e\[' /tmp/tollgate-pkg-agent.log; then fail "ANSI escapes in a log written to a file"; fi

say "the license server under its package's config, as its user"
# A throw-away certificate where the conffile expects one, the first signing key made by
# the admin CLI as the service's user (so the server can read it), then the unit's
# ExecStart as that user.
etc_ls=/etc/tollgate-license-server
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$etc_ls/privkey.pem" -out "$etc_ls/fullchain.pem" 2>/dev/null
chgrp tollgate-license-server "$etc_ls/privkey.pem"
chmod 0640 "$etc_ls/privkey.pem"
as_ls() { setpriv --reuid=tollgate-license-server --regid=tollgate-license-server --init-groups "$@"; }
as_ls tollgate-license-server --config "$etc_ls/license-server.toml" admin key rotate
key=$(ls "$etc_ls"/signing-keys/*.key)
[ "$(stat -c '%U %a' "$key")" = "tollgate-license-server 600" ] || fail "signing key $key: $(stat -c '%U %a' "$key")"
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/tollgate-license-server.service)
# setpriv itself in the background (not a shell function, which would fork a subshell that
# the SIGTERM below would hit instead of the server).
setpriv --reuid=tollgate-license-server --regid=tollgate-license-server --init-groups \
  $exec_start >/tmp/tollgate-pkg-ls.out 2>/tmp/tollgate-pkg-ls.log &
ls_pid=$!
ok=0
for _ in $(seq 1 200); do
  if curl -fsS --cacert "$etc_ls/fullchain.pem" https://localhost:7443/api/v1/keys 2>/dev/null | grep -q .; then ok=1; break; fi
  kill -0 "$ls_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$ok" = 1 ] || { cat /tmp/tollgate-pkg-ls.out /tmp/tollgate-pkg-ls.log; fail "the packaged license server did not answer /api/v1/keys"; }
kill -TERM "$ls_pid"
wait "$ls_pid" || { cat /tmp/tollgate-pkg-ls.log; fail "license server exit status after SIGTERM"; }
[ "$(stat -c %U /var/lib/tollgate-license-server/license-server.db)" = tollgate-license-server ] \
  || fail "database not owned by tollgate-license-server"

say "dpkg -r: binaries and units go; state, user and conffiles stay"
echo "# an operator's change" >> /etc/tollgate/agent.toml
dpkg -r tollgate tollgate-license-server
[ ! -e /usr/bin/tollgate ] && [ ! -e /usr/bin/tollgate-license-server ] || fail "binaries left after remove"
[ ! -e /usr/lib/systemd/system/tollgate.service ] || fail "unit left after remove"
[ -f /var/lib/tollgate/usage.snapshot ] || fail "remove deleted the state"
grep -q "an operator's change" /etc/tollgate/agent.toml || fail "remove lost the edited conffile"
getent passwd tollgate >/dev/null || fail "remove deleted the user"

say "reinstall over the kept state: the edited conffile is kept"
dpkg -i --force-confold "$agent_deb"
grep -q "an operator's change" /etc/tollgate/agent.toml || fail "reinstall replaced the edited conffile"

say "dpkg --purge: state, conffiles and the enablement go"
dpkg --purge tollgate tollgate-license-server
[ ! -e /var/lib/tollgate ] || fail "purge left /var/lib/tollgate"
[ ! -e /var/lib/tollgate-license-server ] || fail "purge left /var/lib/tollgate-license-server"
[ ! -e /etc/tollgate/agent.toml ] || fail "purge left the conffile"
[ ! -e /etc/systemd/system/multi-user.target.wants/tollgate.service ] || fail "purge left the enablement"
# Signing keys are never deleted by a purge (losing them strands every agent).
ls /etc/tollgate-license-server/signing-keys/*.key >/dev/null 2>&1 || fail "purge deleted the signing keys"
rm -rf /etc/tollgate-license-server
echo "check-packages: OK"
