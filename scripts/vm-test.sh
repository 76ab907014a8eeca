#!/usr/bin/env bash
# End-to-end test of backend-iommu's VFIO paths against a real kernel IOMMU, in two guests.
#
# Each guest is a q35 machine under QEMU (TCG) with an emulated VT-d IOMMU, QEMU's `edu` DMA engine
# (28-bit DMA mask) and an `ivshmem-plain` device whose BAR2 is a file on this host. Inside, a
# statically built test program (examples/vfio_edu.rs) binds both devices through VFIO, lets the
# negotiator plan edu -> ivshmem BAR, and has edu move bytes RAM -> edu -> BAR and RAM -> edu ->
# RAM; then the BAR is taken away and the same DMA must fault in the IOMMU (the kernel's DMAR
# line) and land nothing. Back on the host, the same program checks the BAR's file.
#
#   type1:   Debian's own kernel (linux-image-amd64, 6.1 on bookworm) with VFIO type1: a
#            container, the BAR mapped by its virtual address, the mapping dropped.
#   iommufd: a Linux 7.x built from Debian's linux-source-7.* (scripts/guest-kernel.sh, cached
#            outside the clone): an IOAS and device cdevs, the BAR exported as a dma-buf and
#            mapped by file, host memory a memfd mapped by file, and the BAR revoked (the
#            importer told, then the kernel revokes the dma-buf).
#
# Prints `vm-test: PASS type1` and `vm-test: PASS iommufd`; exits non-zero if either fails.
# Everything comes from Debian's packages and crates.io.
#
#   scripts/vm-test.sh                 # both guests
#   scripts/vm-test.sh type1           # one of them
#   VM_KEEP=1 scripts/vm-test.sh       # keep target/vm (initramfs, logs) for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK="$ROOT/target/vm"
TARGET=x86_64-unknown-linux-gnu
PASS_LINE="P2PDMA-VM-TEST: PASS"
RUNS=("${@:-type1 iommufd}")
RUNS=(${RUNS[*]})
mkdir -p "$WORK"

say() { echo "vm-test: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

is_static() { ! readelf -l "$1" 2>/dev/null | grep -q "Requesting program interpreter"; }

# 1. Packages.
apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }; }
need_pkgs=()
for p in qemu-system-x86 busybox-static cpio binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
is_static /bin/busybox || die "/bin/busybox is not static (install busybox-static)"

# 2. The type1 guest's kernel: the package linux-image-amd64 depends on, unpacked (not installed).
debian_kernel() {
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(kernel_pkg)
[ -n "$KPKG" ] || { apt_update; KPKG=$(kernel_pkg); }
[ -n "$KPKG" ] || die "cannot find the kernel package linux-image-amd64 depends on"
KDIR="$WORK/$KPKG"
if [ ! -d "$KDIR/boot" ]; then
  say "fetching $KPKG"
  rm -rf "$WORK/deb" && mkdir -p "$WORK/deb"
  (cd "$WORK/deb" && apt-get download "$KPKG" >/dev/null 2>&1) ||
    (apt_update && cd "$WORK/deb" && apt-get download "$KPKG" >/dev/null) ||
    die "apt-get download $KPKG failed"
  rm -rf "$KDIR.tmp" && dpkg-deb -x "$WORK"/deb/*.deb "$KDIR.tmp" && mv "$KDIR.tmp" "$KDIR"
  rm -rf "$WORK/deb"
fi
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-*)
MODDIR=$(ls -d "$KDIR"/lib/modules/*)/kernel
}

# 3. The test program, static (glibc's static libc: no musl target on this toolchain).
say "building the guest program"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$ROOT/target/vm-build" \
  cargo build --quiet --release --example vfio_edu --target "$TARGET"
PROG="$ROOT/target/vm-build/$TARGET/release/examples/vfio_edu"
is_static "$PROG" || die "$PROG is not statically linked"

# 4. One guest: its initramfs, a boot, and the verdict. $1 names the run and the backend the guest
# must report; $2 is the kernel; $3 the modules to load (paths under $MODDIR; none when built in).
run_guest() {
local name=$1 vmlinuz=$2 MODULES=$3
local LOG="$WORK/$name.log" INITRD="$WORK/initramfs-$name"
rm -rf "$INITRD" && mkdir -p "$INITRD"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$INITRD/bin/busybox"
cp "$PROG" "$INITRD/bin/vfio_edu"
for m in $MODULES; do
  f="$MODDIR/$m"
  [ -f "$f" ] || [ -f "$f.xz" ] || die "module $m missing from $KPKG"
  if [ -f "$f.xz" ]; then xz -dc "$f.xz" >"$INITRD/lib/modules/$(basename "$m")"; else cp "$f" "$INITRD/lib/modules/"; fi
done
cat >"$INITRD/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(for m in $MODULES; do basename "$m"; done | tr '\n' ' '); do
  insmod /lib/modules/\$m || echo "P2PDMA-VM-TEST: insmod \$m failed"
done
# edu (1234:11e8) and ivshmem (1af4:1110) go to vfio-pci.
for d in /sys/bus/pci/devices/*; do
  case "\$(cat \$d/vendor):\$(cat \$d/device)" in
    0x1234:0x11e8|0x1af4:0x1110)
      echo vfio-pci >\$d/driver_override
      echo \${d##*/} >/sys/bus/pci/drivers_probe ;;
  esac
done
/bin/vfio_edu guest
echo "P2PDMA-VM-TEST: exit \$?"
poweroff -f
EOF
chmod +x "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.cpio.gz"

# The ivshmem BAR's backing file: zeros, checked after the run.
local SHM="$WORK/ivshmem-$name.bin"
rm -f "$SHM" && truncate -s 1M "$SHM"

# Boot. TCG: guests hang under KVM on these machines.
say "$name: booting $vmlinuz under QEMU (TCG)"
local start qemu_rc
start=$(date +%s)
rm -f "$LOG"
set +e
timeout 600 qemu-system-x86_64 \
  -accel tcg -cpu EPYC -smp 1 -m 512M \
  -M q35,kernel-irqchip=split \
  -device intel-iommu,intremap=on,caching-mode=on \
  -nic none -device edu \
  -object memory-backend-file,id=shm,mem-path="$SHM",size=1M,share=on \
  -device ivshmem-plain,memdev=shm \
  -kernel "$vmlinuz" -initrd "$INITRD.cpio.gz" \
  -append "console=ttyS0 intel_iommu=on iommu=nopt panic=-1 loglevel=4" \
  -nographic -no-reboot -serial "file:$LOG" -monitor none </dev/null 2>"$WORK/qemu-$name.err"
qemu_rc=$?
set -e
# QEMU's own messages (VT-d translation failures are expected after the unmap), without the
# list of EPYC features TCG does not emulate.
grep -v "TCG doesn't support requested feature" "$WORK/qemu-$name.err" | sed "s/^/qemu $name: /" >&2 || true
sed "s/^/guest $name: /" "$LOG" | grep -v "^guest $name: \s*$" >&2 || true
[ $qemu_rc -eq 0 ] || die "$name: qemu exited with $qemu_rc"

# Verdict: the guest's pass line naming the backend it was meant to use, and the host file.
grep -q "^$PASS_LINE $name\b" "$LOG" || die "$name: the guest did not print '$PASS_LINE $name'"
"$PROG" check-host-file "$SHM" || die "$name: the ivshmem file does not hold what the guest DMA'd"
[ -n "${VM_KEEP:-}" ] || rm -rf "$INITRD" "$INITRD.cpio.gz"
say "$name: guest and host checks passed in $(($(date +%s) - start)) s"
}

# 5. The runs, each in a subshell (a failure ends that run, not the others), each with its own
# PASS line; the script fails if any run did. The subshell is not a condition (`if ( ... )` would
# switch `set -e` off inside it): its status is read after it ran.
run_one() {
  case "$1" in
    type1)
      debian_kernel
      # In dependency order (modules.dep is written by depmod at install, which we skip).
      run_guest type1 "$VMLINUZ" "virt/lib/irqbypass.ko drivers/vfio/vfio.ko
        drivers/vfio/vfio_iommu_type1.ko drivers/vfio/vfio_virqfd.ko
        drivers/vfio/pci/vfio-pci-core.ko drivers/vfio/pci/vfio-pci.ko" ;;
    iommufd)
      # Everything the iommufd guest needs is built into its kernel.
      local kernel
      kernel=$(scripts/guest-kernel.sh)
      [ -f "$kernel" ] || die "iommufd: scripts/guest-kernel.sh gave no kernel ('$kernel')"
      run_guest iommufd "$kernel" "" ;;
    *) die "unknown run '$1' (type1 or iommufd)" ;;
  esac
}
failed=()
for run in "${RUNS[@]}"; do
  set +e
  (set -e; run_one "$run")
  rc=$?
  set -e
  if [ $rc -eq 0 ]; then
    echo "vm-test: PASS $run"
  else
    failed+=("$run")
  fi
done
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
