#!/usr/bin/env bash
# Check what packaging/build.sh made (CI runs this after it, as root):
# the .deb is installed on this machine with dpkg -i, its files, modes and
# units are checked (systemd-analyze verify; the server's exposure at or
# under 3.0), nothing is started or enabled, then it is removed and purged
# and nothing of it is left; the .rpm's file list, modes and scriptlets
# are checked with rpm -qp. Refuses to run where a director package is
# already installed (it would be replaced, then removed).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-packages: FAILED: $*" >&2; exit 1; }
say() { echo "check-packages: $*"; }

deb=$(ls target/packages/director_*.deb 2>/dev/null | head -1)
rpm_file=$(ls target/packages/director-*.rpm 2>/dev/null | head -1)
[ -n "$deb" ] && [ -n "$rpm_file" ] || fail "no packages in target/packages (run packaging/build.sh)"
if dpkg -s director >/dev/null 2>&1; then
  fail "a director package is installed here already; not replacing it"
fi
[ "$(id -u)" = 0 ] || fail "installing the .deb needs root"

mode_of() { stat -c %a "$1"; }
expect_mode() { # PATH MODE
  [ -e "$1" ] || fail "$1 is missing"
  [ "$(mode_of "$1")" = "$2" ] || fail "$1 has mode $(mode_of "$1"), not $2"
}

# --- .deb: install, look, remove, purge ---
dpkg -i "$deb" >/dev/null
trap 'dpkg -P director >/dev/null 2>&1 || true' EXIT
expect_mode /usr/bin/director 755
expect_mode /usr/bin/director-server-systemd 755
expect_mode /usr/bin/director-client-systemd 755
expect_mode /etc/director/config.yaml 600
expect_mode /var/lib/director 700
expect_mode /var/lib/director/node 700
expect_mode /var/cache/director 700
expect_mode /lib/systemd/system/director-server.service 644
expect_mode /lib/systemd/system/director-client.service 644
version=$(/usr/bin/director --version)
grep -q "^director " <<<"$version" || fail "the installed director does not run"
grep -q '^ExecStart=/usr/bin/director --config-file /etc/director/config.yaml server$' \
  /lib/systemd/system/director-server.service || fail "the server unit's ExecStart"
grep -q '^ExecStart=/usr/bin/director --config-file /etc/director/config.yaml client$' \
  /lib/systemd/system/director-client.service || fail "the client unit's ExecStart"
# The installed config is one director reads.
/usr/bin/director --config-file /etc/director/config.yaml --help >/dev/null \
  || fail "director refuses the installed config"
# Nothing enabled: no unit linked into a target.
if ls /etc/systemd/system/*.wants/director-* >/dev/null 2>&1; then
  fail "a unit was enabled on install"
fi
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /lib/systemd/system/director-server.service \
    /lib/systemd/system/director-client.service || fail "systemd-analyze verify"
  exposure=$(systemd-analyze security --offline=true /lib/systemd/system/director-server.service 2>/dev/null | tail -1)
  systemd-analyze security --offline=true --threshold=30 /lib/systemd/system/director-server.service \
    >/dev/null 2>&1 || fail "the server unit is exposed: $exposure"
  say "units verified; server unit: ${exposure#→ }"
else
  say "systemd-analyze is missing: the units were not verified"
fi
say "installed $(basename "$deb"): files, modes and units as expected"

echo "shared_key: kept-across-remove" >> /etc/director/config.yaml
dpkg -r director >/dev/null
[ ! -e /usr/bin/director ] || fail "/usr/bin/director left after dpkg -r"
[ ! -e /lib/systemd/system/director-server.service ] || fail "a unit left after dpkg -r"
grep -q kept-across-remove /etc/director/config.yaml || fail "the edited config did not survive dpkg -r"
dpkg -P director >/dev/null
trap - EXIT
for p in /etc/director /var/cache/director /usr/share/doc/director /usr/bin/director-server-systemd; do
  [ ! -e "$p" ] || fail "$p left after dpkg -P"
done
say "removed (the edited config kept) and purged: nothing left"

# --- .rpm: list, modes, scriptlets ---
list=$(rpm -qlvp "$rpm_file")
check_rpm() { # MODE-STRING PATH
  grep -qE "^$1 .* $2\$" <<< "$list" || fail "the .rpm lacks $2 as $1"
}
check_rpm '-rwxr-xr-x' /usr/bin/director
check_rpm '-rwxr-xr-x' /usr/bin/director-server-systemd
check_rpm '-rwxr-xr-x' /usr/bin/director-client-systemd
check_rpm '-rw-------' /etc/director/config.yaml
check_rpm 'drwx------' /var/lib/director
check_rpm 'drwx------' /var/lib/director/node
check_rpm 'drwx------' /var/cache/director
check_rpm '-rw-r--r--' /usr/lib/systemd/system/director-server.service
check_rpm '-rw-r--r--' /usr/lib/systemd/system/director-client.service
config_files=$(rpm -qpc "$rpm_file")
grep -qx /etc/director/config.yaml <<<"$config_files" || fail "the config is not a %config file"
scripts=$(rpm -qp --scripts "$rpm_file")
grep -q "systemctl daemon-reload" <<< "$scripts" || fail "no daemon-reload in the scriptlets"
grep -q "systemctl stop director-server.service" <<< "$scripts" || fail "no stop before removal"
if grep -qE "systemctl (enable|start)" <<< "$scripts"; then fail "a scriptlet enables or starts a unit"; fi
say "$(basename "$rpm_file"): files, modes, config and scriptlets as expected"
