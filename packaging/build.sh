#!/usr/bin/env bash
# Build director's .deb and .rpm into target/packages/ from this checkout.
#
# Both hold the same tree: the release binaries, stripped, in /usr/bin
# (director and the two systemd helpers); the server and client units,
# pointing at /usr/bin/director and /etc/director/config.yaml; that config
# (comments only, mode 0600: it is where the shared key goes, marked a
# configuration file the package manager keeps); the state, key and cache
# directories, 0700; bash completion; the README. Nothing is enabled or
# started on install; removal stops the units first. The name, version,
# description, license and maintainer come from Cargo.toml.
#
# Built with the distributions' own tools, dpkg-deb and rpmbuild (Debian's
# `rpm` package has it), rather than cargo-deb and cargo-generate-rpm:
# those compile ~150 crates on every clean CI machine for what ~200 lines
# of this script do.
#
# Usage: packaging/build.sh [--no-build]   (--no-build: use target/release as is)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "build.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
for tool in dpkg-deb python3 strip; do
  command -v "$tool" >/dev/null || { echo "build.sh: needs $tool" >&2; exit 2; }
done

out=target/packages
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ $build = 1 ] && cargo build --release --locked --bins -q

# The crate's metadata.
eval "$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, shlex, sys
p = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "director"][0]
m = (p.get("metadata") or {}).get("packages", {})
for k, v in {
    "name": p["name"], "version": p["version"], "summary": p["description"],
    "license": p["license"], "maintainer": (p["authors"] or ["unknown"])[0],
    "homepage": p.get("homepage") or p.get("repository") or "",
    "long": m.get("long-description", "").strip(), "section": m.get("section", "admin"),
}.items():
    print(f"{k}={shlex.quote(v)}")
')"
deb_arch=$(dpkg --print-architecture)
rpm_arch=$(uname -m)

# The tree both packages install.
stage="$work/root"
install -d -m 0755 "$stage/usr/bin" "$stage/usr/share/doc/$name" \
  "$stage/usr/share/bash-completion/completions" "$stage/etc/director"
for b in director director-server-systemd director-client-systemd; do
  strip --strip-unneeded -o "$stage/usr/bin/$b" "target/release/$b"
  chmod 0755 "$stage/usr/bin/$b"
done
# The config file exactly as the helpers make it (they create it 0600).
target/release/director-server-systemd --unit-dir "$work/discard" \
  --config-file "$stage/etc/director/config.yaml" --director target/release/director >/dev/null
chmod 0600 "$stage/etc/director/config.yaml"
install -d -m 0700 "$stage/var/lib/director" "$stage/var/lib/director/node" "$stage/var/cache/director"
target/release/director completions bash > "$stage/usr/share/bash-completion/completions/director"
install -m 0644 README.md "$stage/usr/share/doc/$name/README.md"
printf 'director\nCopyright: the director developers\nLicense: %s\n See /usr/share/common-licenses/Apache-2.0 or https://www.apache.org/licenses/LICENSE-2.0\n' \
  "$license" > "$stage/usr/share/doc/$name/copyright"
# The units as the helpers write them, for this layout.
units() { # DIR
  install -d -m 0755 "$1"
  for mode in server client; do
    sed -e 's#@DIRECTOR@#/usr/bin/director#' -e 's#@CONFIG@#/etc/director/config.yaml#' \
        -e "s#^\# Written by director-$mode-systemd.*#\# Installed by the $name package. Configure director in /etc/director/config.yaml.#" \
        "systemd/director-$mode.service" > "$1/director-$mode.service"
    chmod 0644 "$1/director-$mode.service"
  done
}

# Maintainer scripts, shared in spirit: reload systemd's view; stop what
# runs before its binary goes. Never enable or start.
reload='if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi'
stop='if [ -d /run/systemd/system ]; then systemctl stop director-server.service director-client.service >/dev/null 2>&1 || true; fi'

mkdir -p "$out"

# --- .deb ---
deb="$work/deb"
cp -a "$stage" "$deb"
units "$deb/lib/systemd/system"
mkdir -p "$deb/DEBIAN"
depends=$(cd "$work" && mkdir -p debian && printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" > debian/control \
  && dpkg-shlibdeps -O -e"$deb/usr/bin/director" 2>/dev/null | sed -n "s/^shlibs:Depends=//p") || true
[ -n "$depends" ] || depends="libc6, libgcc-s1, libstdc++6"
{
  echo "Package: $name"
  echo "Version: $version-1"
  echo "Architecture: $deb_arch"
  echo "Maintainer: $maintainer"
  echo "Installed-Size: $(du -sk --exclude=DEBIAN "$deb" | cut -f1)"
  echo "Depends: $depends"
  echo "Section: $section"
  echo "Priority: optional"
  [ -n "$homepage" ] && echo "Homepage: $homepage"
  echo "Description: $summary"
  sed -e 's/^$/./' -e 's/^/ /' <<< "$long"
} > "$deb/DEBIAN/control"
echo /etc/director/config.yaml > "$deb/DEBIAN/conffiles"
printf '#!/bin/sh\nset -e\nif [ "$1" = configure ]; then\n  %s\nfi\n' "$reload" > "$deb/DEBIAN/postinst"
printf '#!/bin/sh\nset -e\nif [ "$1" = remove ] || [ "$1" = upgrade ]; then\n  %s\nfi\n' "$stop" > "$deb/DEBIAN/prerm"
printf '#!/bin/sh\nset -e\n%s\nif [ "$1" = purge ]; then\n  rm -rf /var/cache/director\nfi\n' "$reload" > "$deb/DEBIAN/postrm"
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
(cd "$deb" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) > "$work/md5sums"
mv "$work/md5sums" "$deb/DEBIAN/md5sums"
deb_file="$out/${name}_${version}-1_${deb_arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$deb" "$deb_file" >/dev/null
echo "built $deb_file"

# --- .rpm ---
if ! command -v rpmbuild >/dev/null; then
  echo "build.sh: no rpmbuild (Debian: apt-get install rpm); the .rpm is not built" >&2
  exit 1
fi
rpmtop="$work/rpm"
mkdir -p "$rpmtop"/{BUILD,RPMS,SOURCES,SPECS,SRPMS}
rpmroot="$work/rpmroot"
cp -a "$stage" "$rpmroot"
units "$rpmroot/usr/lib/systemd/system"
desc=$(printf '%s\n' "$long")
cat > "$rpmtop/SPECS/$name.spec" <<SPEC
%global debug_package %{nil}
%global _build_id_links none
%global __strip /bin/true
Name: $name
Version: $version
Release: 1
Summary: $summary
License: $license
BuildArch: $rpm_arch
$( [ -n "$homepage" ] && echo "URL: $homepage" )

%description
$desc

%install
mkdir -p %{buildroot}
cp -a $rpmroot/. %{buildroot}/

%post
$reload

%preun
if [ \$1 -eq 0 ]; then
  $stop
fi

%postun
$reload
if [ \$1 -eq 0 ]; then
  rm -rf /var/cache/director
fi

%files
%attr(0755,root,root) /usr/bin/director
%attr(0755,root,root) /usr/bin/director-server-systemd
%attr(0755,root,root) /usr/bin/director-client-systemd
%attr(0644,root,root) /usr/lib/systemd/system/director-server.service
%attr(0644,root,root) /usr/lib/systemd/system/director-client.service
%dir %attr(0755,root,root) /etc/director
%config(noreplace) %attr(0600,root,root) /etc/director/config.yaml
%dir %attr(0700,root,root) /var/lib/director
%dir %attr(0700,root,root) /var/lib/director/node
%dir %attr(0700,root,root) /var/cache/director
%attr(0644,root,root) /usr/share/bash-completion/completions/director
%doc %attr(0644,root,root) /usr/share/doc/$name/README.md
%license %attr(0644,root,root) /usr/share/doc/$name/copyright
SPEC
rpmbuild --quiet --define "_topdir $rpmtop" --define "_rpmdir $rpmtop/RPMS" \
  -bb "$rpmtop/SPECS/$name.spec" >"$work/rpmbuild.log" 2>&1 || { cat "$work/rpmbuild.log" >&2; exit 1; }
rpm_file="$out/$name-$version-1.$rpm_arch.rpm"
mv "$rpmtop/RPMS/$rpm_arch/"*.rpm "$rpm_file"
echo "built $rpm_file"
