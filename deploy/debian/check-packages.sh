#!/usr/bin/env bash
# Checks the two Debian packages as an operator would meet them: lintian, install, what the
# install put where (binary, user, directories, conffile, systemd unit), a short agent start
# under the package's own config as the package's user, remove (state kept), purge (state
# gone). Run as root on a Debian host, with the .deb files as arguments:
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
[ -d /etc/tollgate-license-server/signing-keys ] || fail "purge deleted the signing-key directory"
rm -rf /etc/tollgate-license-server
echo "check-packages: OK"
