#!/usr/bin/env bash
# Builds (once) the small Linux 7.x guest kernel that scripts/vm-test.sh boots for its iommufd run,
# and prints the path of its bzImage on stdout.
#
# Debian's bookworm kernels have no iommufd, and Debian's 7.x kernel packages ship with
# CONFIG_IOMMUFD unset, so the kernel is built from Debian's `linux-source-7.*` package. That
# package is in trixie-backports (and unstable), not bookworm: the suite is added for this one
# package through a private apt state (lists under the cache directory; the system's sources and
# pinning are not touched), and the newest 7.x source it offers is taken.
#
# The configuration is `make tinyconfig` plus scripts/guest-kernel/iommufd.config. The result is
# cached outside the clone, keyed by the source package's version and the fragment's hash, so
# repeated runs skip the build (about 5 minutes on 2 cores); a fresh machine builds it.
# Everything but the bzImage's path goes to stderr: callers take stdout as the path.
#
#   scripts/guest-kernel.sh                          # prints .../bzImage
#   P2PDMA_KERNEL_CACHE=/some/dir scripts/guest-kernel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FRAGMENT="$ROOT/scripts/guest-kernel/iommufd.config"
CACHE="${P2PDMA_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2pdma/guest-kernel}"
SUITE="${P2PDMA_KERNEL_SUITE:-trixie-backports}"

say() { echo "guest-kernel: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build at a time per cache

# 1. Build tools, from bookworm.
need=()
for p in make gcc bc flex bison libelf-dev libssl-dev xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  # dpkg prints to stdout whatever -qq says: keep it off ours.
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# The suite is signed with trixie's keys, which debian-archive-keyring has had since bookworm's
# 2023.3 update; an older keyring makes the update below fail with a message naming the key.
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] ||
  die "no /usr/share/keyrings/debian-archive-keyring.gpg (install debian-archive-keyring)"

# 2. The suite that has linux-source-7.*, in a private apt state.
APT="$CACHE/apt"
mkdir -p "$APT/parts" "$APT/lists/partial"
cat >"$APT/parts/p2pdma-kernel.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
APTOPT=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/parts"
  -o "Dir::State::Lists=$APT/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
# As root, apt drops to the _apt user, who cannot write into this cache: download as root.
[ "$(id -u)" -ne 0 ] || APTOPT+=(-o APT::Sandbox::User=root)
newest_source() {
  apt-cache "${APTOPT[@]}" search --names-only '^linux-source-7\.[0-9]+$' 2>/dev/null |
    awk '{print $1}' | sort -V | tail -1
}
update_lists() { apt-get "${APTOPT[@]}" update -qq >&2; }
# The newest linux-source-7.* and its version, into PKG and VERSION.
resolve() {
  PKG=$(newest_source)
  VERSION=""
  [ -n "$PKG" ] || return 1
  VERSION=$(apt-cache "${APTOPT[@]}" policy "$PKG" | awk '/Candidate:/{print $2}')
  [ -n "$VERSION" ] && [ "$VERSION" != "(none)" ]
}
# Lists older than a day are refreshed (backports are superseded quickly); a failed refresh
# with usable lists is carried on with, and the download below retries after a new one.
if ! resolve || [ -n "$(find "$APT/lists" -maxdepth 1 -name '*Packages*' -mtime +1)" ]; then
  update_lists || say "apt-get update of $SUITE failed; using the lists there are"
  resolve || die "no linux-source-7.* package in $SUITE"
fi

# The key: the source, the fragment, and this script's own configure and build steps.
KEY="$PKG-$VERSION-$(cat "$FRAGMENT" "$ROOT/scripts/guest-kernel.sh" | sha256sum | cut -c1-16)"
OUT="$CACHE/$KEY"
if [ -f "$OUT/bzImage" ]; then
  say "cached: $OUT"
  echo "$OUT/bzImage"
  exit 0
fi

# 3. Fetch and unpack the source (the .deb holds a tarball under usr/src).
BUILD="$CACHE/build"
rm -rf "$BUILD" && mkdir -p "$BUILD/deb"
say "fetching $PKG $VERSION from $SUITE"
download() { (cd "$BUILD/deb" && apt-get "${APTOPT[@]}" download "$PKG=$VERSION" >&2); }
if ! download; then
  # The mirror dropped that version since the lists were read: refresh, re-resolve, retry once.
  say "download of $PKG $VERSION failed; refreshing the lists and trying again"
  update_lists || die "apt-get update of $SUITE failed"
  resolve || die "no linux-source-7.* package in $SUITE"
  KEY="$PKG-$VERSION-$(cat "$FRAGMENT" "$ROOT/scripts/guest-kernel.sh" | sha256sum | cut -c1-16)"
  OUT="$CACHE/$KEY"
  download || die "apt-get download $PKG=$VERSION failed"
fi
dpkg-deb -x "$BUILD"/deb/*.deb "$BUILD/pkg"
TARBALL=$(ls "$BUILD"/pkg/usr/src/linux-source-*.tar.*)
say "unpacking $(basename "$TARBALL")"
mkdir -p "$BUILD/src"
tar -xf "$TARBALL" -C "$BUILD/src" --strip-components=1
rm -rf "$BUILD/deb" "$BUILD/pkg"

# 4. Configure: tinyconfig plus the fragment, then require every option to have stuck.
SRC="$BUILD/src"
make -C "$SRC" -s tinyconfig >/dev/null
options=$(grep -v '^\s*#' "$FRAGMENT" | grep -v '^\s*$')
args=()
for o in $options; do args+=(--enable "$o"); done
"$SRC/scripts/config" --file "$SRC/.config" "${args[@]}"
make -C "$SRC" -s olddefconfig >/dev/null
missing=()
for o in $options; do grep -q "^CONFIG_$o=y" "$SRC/.config" || missing+=("$o"); done
[ ${#missing[@]} -eq 0 ] || die "options not enabled after olddefconfig: ${missing[*]}"

# 5. Build.
say "building bzImage with -j$(nproc) (about 5 minutes on 2 cores)"
start=$(date +%s)
make -C "$SRC" -s -j"$(nproc)" bzImage >"$BUILD/build.log" 2>&1 || {
  tail -40 "$BUILD/build.log" >&2
  die "kernel build failed (log: $BUILD/build.log)"
}
say "built in $(($(date +%s) - start)) s"
mkdir -p "$OUT.tmp"
cp "$SRC/arch/x86/boot/bzImage" "$SRC/.config" "$OUT.tmp/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
rm -rf "$BUILD"
echo "$OUT/bzImage"
