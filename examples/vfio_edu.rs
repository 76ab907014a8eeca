//! The program `scripts/vm-test.sh` runs inside its QEMU guests: p2pdma driving a real kernel's
//! VFIO and VT-d driver, with QEMU's `edu` DMA engine moving bytes peer-to-peer into an
//! `ivshmem` BAR whose memory is a file on the host.
//!
//! The kernel decides the path ([`VfioBackend::detect`]): on a kernel with iommufd and VFIO
//! cdevs (the 7.x guest) edu is attached to an IOAS, ivshmem's BAR2 is exported as a dma-buf and
//! mapped by file, host memory is a memfd mapped by file, and the BAR is taken back with the
//! library's forced revoke (importer told, then the kernel revokes). Otherwise (the 6.1 guest)
//! VFIO type1: a container, the BAR mapped by its virtual address, and the mapping dropped.
//!
//! `vfio_edu guest` runs the test (both devices bound to vfio-pci) and prints
//! `P2PDMA-VM-TEST: PASS <backend>` or `P2PDMA-VM-TEST: FAIL: <why>`;
//! `vfio_edu check-host-file FILE` checks, on the host, that the BAR's file holds what the guest
//! moved there and nothing sent after the BAR was unmapped or revoked.
//!
//! Not runnable outside that guest: it needs VFIO, an IOMMU and those two devices.

use backend_iommu::iommufd::VfioDmaBuf;
use backend_iommu::vfio::{MappedRegion, PeerBar, VfioBackend, VfioSession};
use backend_passthrough::LockedHostMemory;
use p2p_core::prelude::*;
use p2p_core::topology::sysfs;
use p2p_core::traits::{FileSlice, MapAttrs, MapPiece};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per edu transfer: QEMU 7.2's edu rejects a whole 4096-byte buffer (off by one).
const LEN: u64 = 2048;
/// edu's DMA buffer, in its own address space.
const EDU_BUF: u64 = 0x40000;
/// The pass line the harness looks for.
const PASS: &str = "P2PDMA-VM-TEST: PASS";

/// The bytes of transfer `seed`: distinct per seed, never all one value.
fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// What lands in the BAR (and so in the host file): transfer A.
const SEED_A: u8 = 0x5a;
/// What must not land: transfer B, sent after the mapping was dropped.
const SEED_B: u8 = 0xa5;

fn fail(msg: impl Into<String>) -> Error {
    Error::CheckFailed {
        what: "the edu example",
        detail: msg.into(),
    }
}

/// QEMU's `edu` device, programmed through its mmapped BAR0.
struct Edu {
    mmio: MappedRegion,
    mask: u64,
}

impl Edu {
    const ID: u64 = 0x00;
    const DMA_SRC: u64 = 0x80;
    const DMA_DST: u64 = 0x88;
    const DMA_COUNT: u64 = 0x90;
    const DMA_CMD: u64 = 0x98;
    const CMD_START: u64 = 1;
    const CMD_TO_RAM: u64 = 2;

    fn new(mmio: MappedRegion, mask: u64) -> Result<Self> {
        let id = mmio.read_u32(Self::ID)?;
        if id & 0xff != 0xed {
            return Err(fail(format!("BAR0 identification {id:#x} is not edu's")));
        }
        Ok(Self { mmio, mask })
    }

    /// One transfer between edu's buffer and `iova` (RAM side: `to_ram` says which way), waited
    /// for. An IOVA the device cannot emit is refused here, before edu sees it: edu would
    /// silently clamp it to its mask and write somewhere else.
    fn dma(&self, iova: u64, to_ram: bool) -> Result<()> {
        let last = iova + LEN - 1;
        if last > self.mask {
            return Err(fail(format!(
                "refusing to hand edu IOVA {iova:#x}: above its DMA mask {:#x}",
                self.mask
            )));
        }
        let (src, dst) = if to_ram {
            (EDU_BUF, iova)
        } else {
            (iova, EDU_BUF)
        };
        self.mmio.write_u64(Self::DMA_SRC, src)?;
        self.mmio.write_u64(Self::DMA_DST, dst)?;
        self.mmio.write_u64(Self::DMA_COUNT, LEN)?;
        let dir = if to_ram { Self::CMD_TO_RAM } else { 0 };
        self.mmio.write_u64(Self::DMA_CMD, Self::CMD_START | dir)?;
        let start = Instant::now();
        while self.mmio.read_u64(Self::DMA_CMD)? & Self::CMD_START != 0 {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(fail("edu DMA did not complete in 20 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// edu as the negotiator sees it: no ODP (it cannot take faults), reaches peer memory, 28-bit
/// DMA mask.
#[derive(Debug)]
struct EduImporter {
    addr: PciAddr,
}

impl DmaImporter for EduImporter {
    fn device(&self) -> PciAddr {
        self.addr
    }
    fn caps(&self) -> ImporterCaps {
        ImporterCaps {
            flags: ImporterFlags::P2P,
            dma_mask: dma_mask(28),
            max_segment: 0,
        }
    }
    fn invalidate(&self, _: &Invalidation) -> Result<()> {
        // Every transfer is waited for: nothing is in flight once dma() returns.
        Ok(())
    }
}

fn find(scan: &sysfs::SysfsScan, vendor: u16, device: u16) -> Result<PciAddr> {
    scan.devices
        .iter()
        .find(|d| d.vendor == vendor && d.device == device)
        .map(|d| d.addr)
        .ok_or_else(|| fail(format!("no {vendor:04x}:{device:04x} in /sys")))
}

/// The DMAR fault line the kernel logged for a DMA to `iova`, waiting up to `wait` for one.
fn dmar_fault(iova: u64, wait: Duration) -> Option<String> {
    let needle = format!("fault addr {iova:#x}");
    let start = Instant::now();
    loop {
        // The guest is a busybox initramfs: its dmesg reads the kernel ring buffer for us.
        let log = std::process::Command::new("/bin/dmesg").output().ok()?;
        let text = String::from_utf8_lossy(&log.stdout).into_owned();
        if let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("DMAR") && l.contains(&needle))
        {
            return Some(line.to_owned());
        }
        if start.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn guest() -> Result<VfioBackend> {
    let sys = Path::new("/sys");
    let scan = sysfs::scan(sys)?;
    let edu_addr = find(&scan, 0x1234, 0x11e8)?;
    let shm_addr = find(&scan, 0x1af4, 0x1110)?;
    println!("edu at {edu_addr}, ivshmem at {shm_addr}");
    // The platform chooses: iommufd when the kernel has it for both devices, else type1.
    let session = VfioSession::open(sys, Path::new("/dev"), &[edu_addr, shm_addr])?;
    let backend = session.backend();
    println!("VFIO backend: {backend}");
    print_domain("domain", &*session.domain());
    let edu_dev = session.device(edu_addr)?;
    edu_dev.enable_bus_master()?;
    let edu = Edu::new(edu_dev.map_bar(0)?, dma_mask(28))?;

    // Exporters: ivshmem's BAR2 (peer memory) and a locked host buffer, a memfd under iommufd
    // so that both are mapped by file there.
    let bar = session.peer_bar(&scan.topology, shm_addr, 2)?;
    let host = Arc::new(match backend {
        VfioBackend::Iommufd => LockedHostMemory::memfd(2 << 20, 0)?,
        VfioBackend::Type1 => LockedHostMemory::new(2 << 20, 0)?,
    });
    {
        let all = host.export(AddrRange::new(Offset(0), host.len())?, false)?;
        session.add_host_memory(VirtAddr(host.va()), &host.chunks(&all)?)?;
        host.release(&all)?;
    }
    let platform = Arc::new(session.platform(scan.topology.clone(), host.clone()));
    let negotiator = Negotiator::new(platform);
    let importer: Arc<dyn DmaImporter> = Arc::new(EduImporter { addr: edu_addr });
    let host_exp: Arc<dyn MemoryExporter> = host.clone();
    let m = map_both(&negotiator, &bar.exporter(), &host_exp, &edu, &importer)?;
    let bar_mmap = session.device(shm_addr)?.map_bar(2)?;
    let a = ram_to_bar_and_back(&edu, &host, &m, |out| bar_mmap.read_bytes(0, out))?;
    let t = Taken {
        negotiator: &negotiator,
        domain: &*session.domain(),
        edu: &edu,
        host: &host,
    };
    match bar {
        PeerBar::Mapped(_) => drop_and_check(&t, m, &bar_mmap, &a)?,
        PeerBar::DmaBuf(buf) => {
            drop(bar_mmap); // memory decoding goes off: the mapping must not be touched after
            check_memfd(&host, &a)?;
            revoke_and_check(&t, &buf, m)?;
        }
    }
    Ok(backend)
}

/// What the end of a run needs.
struct Taken<'a> {
    negotiator: &'a Negotiator,
    domain: &'a dyn IommuDomain,
    edu: &'a Edu,
    host: &'a LockedHostMemory,
}

/// The memfd's own bytes (read from the file, not the mapping) hold what edu copied.
fn check_memfd(host: &LockedHostMemory, a: &[u8]) -> Result<()> {
    let memfd = host
        .file()
        .ok_or_else(|| fail("the host buffer has no memfd"))?;
    let mut in_file = vec![0u8; LEN as usize];
    std::os::unix::fs::FileExt::read_exact_at(&**memfd, &mut in_file, 0x1000)
        .map_err(|e| fail(format!("pread of the memfd: {e}")))?;
    if in_file != a {
        return Err(fail("the memfd does not hold what edu copied"));
    }
    println!("the memfd holds the {LEN} bytes edu copied, read back from the file");
    Ok(())
}

fn print_domain(what: &str, domain: &dyn IommuDomain) {
    println!(
        "{what}: aperture {}, reserved {:?}",
        domain.aperture(),
        domain
            .reserved_regions()
            .iter()
            .map(|r| r.range.to_string())
            .collect::<Vec<_>>()
    );
}

/// The plan for edu -> ivshmem BAR, which must go through the host bridge and the IOMMU.
fn plan_bar(
    negotiator: &Negotiator,
    bar: &dyn MemoryExporter,
    edu: &dyn DmaImporter,
) -> Result<Plan> {
    let plan = negotiator.negotiate(bar, edu, Access::WRITE, &Policy::default())?;
    println!("plan edu -> ivshmem BAR2: {}", plan.strategy);
    for r in &plan.reasons {
        println!("  because {r}");
    }
    if plan.strategy != Strategy::ViaIommu {
        return Err(fail(format!("expected ViaIommu, got {}", plan.strategy)));
    }
    Ok(plan)
}

/// Checks that the IOVAs handed out fit edu's 28-bit mask, and that edu refuses one above it.
fn check_below_mask(edu: &Edu, iovas: &[u64]) -> Result<()> {
    for &iova in iovas {
        if iova + 0x1000 - 1 > edu.mask {
            return Err(fail(format!(
                "the negotiator handed out IOVA {iova:#x} above 28 bits"
            )));
        }
    }
    if edu.dma(1 << 28, true).is_ok() {
        return Err(fail("an IOVA above the mask reached edu"));
    }
    Ok(())
}

/// Requires the kernel's DMAR fault line for a DMA to `iova`.
fn require_fault(iova: u64, after: &str) -> Result<()> {
    match dmar_fault(iova, Duration::from_secs(5)) {
        Some(line) => {
            println!("after {after} the IOMMU refused the DMA: {line}");
            Ok(())
        }
        None => Err(fail(format!(
            "no DMAR fault at {iova:#x} was logged for the DMA after {after}"
        ))),
    }
}

/// The two mappings every run makes: one page of the BAR (planned `via-iommu`) and two pages of
/// host memory, both for edu, with their IOVAs checked against edu's mask.
struct Mapped {
    bar: Mapping,
    bar_iova: u64,
    host: Mapping,
    host_iova: u64,
}

fn map_both(
    negotiator: &Negotiator,
    bar: &Arc<dyn MemoryExporter>,
    host: &Arc<dyn MemoryExporter>,
    edu: &Edu,
    importer: &Arc<dyn DmaImporter>,
) -> Result<Mapped> {
    let plan = plan_bar(negotiator, &**bar, &**importer)?;
    let page = AddrRange::new(Offset(0), 0x1000)?;
    let bar_map = negotiator.establish(&plan, bar, importer, page)?;
    let bar_iova = bar_map.segments()?[0].addr.0;
    let rw = Access::READ | Access::WRITE;
    let host_plan = negotiator.negotiate(&**host, &**importer, rw, &Policy::default())?;
    let host_range = AddrRange::new(Offset(0), 0x2000)?;
    let host_map = negotiator.establish(&host_plan, host, importer, host_range)?;
    let host_iova = host_map.segments()?[0].addr.0;
    println!(
        "mapped: BAR2 page at IOVA {bar_iova:#x}, host buffer at IOVA {host_iova:#x} ({})",
        host_plan.strategy
    );
    check_below_mask(edu, &[bar_iova, host_iova])?;
    Ok(Mapped {
        bar: bar_map,
        bar_iova,
        host: host_map,
        host_iova,
    })
}

/// RAM -> edu -> BAR, checked with `read_bar`, then RAM -> edu -> RAM, checked in the buffer.
/// Returns the pattern that is now in the BAR.
fn ram_to_bar_and_back(
    edu: &Edu,
    host: &LockedHostMemory,
    m: &Mapped,
    read_bar: impl Fn(&mut [u8]) -> Result<()>,
) -> Result<Vec<u8>> {
    let a = pattern(SEED_A);
    host.write(0, &a)?;
    edu.dma(m.host_iova, false)?;
    edu.dma(m.bar_iova, true)?;
    let mut seen = vec![0u8; LEN as usize];
    read_bar(&mut seen)?;
    if seen != a {
        return Err(fail("the BAR does not hold the pattern edu wrote"));
    }
    println!("edu wrote {LEN} bytes RAM -> edu -> ivshmem BAR through the IOMMU");
    edu.dma(m.host_iova + 0x1000, true)?;
    host.read(0x1000, &mut seen)?;
    if seen != a {
        return Err(fail("host RAM round trip through edu lost bytes"));
    }
    println!("edu copied {LEN} bytes host RAM -> edu -> host RAM through the IOMMU");
    Ok(a)
}

/// Type1: the BAR mapping is dropped, and the same DMA must fault in the IOMMU and not land.
fn drop_and_check(t: &Taken, m: Mapped, bar: &MappedRegion, a: &[u8]) -> Result<()> {
    drop(m.bar);
    if t.domain.translate(Iova(m.bar_iova)).is_some() {
        return Err(fail(
            "the IOVA still translates after the mapping was dropped",
        ));
    }
    t.host.write(0x800, &pattern(SEED_B))?;
    t.edu.dma(m.host_iova + 0x800, false)?;
    t.edu.dma(m.bar_iova, true)?;
    let mut seen = vec![0u8; LEN as usize];
    bar.read_bytes(0, &mut seen)?;
    if seen != a {
        return Err(fail("DMA through a dropped mapping reached the BAR"));
    }
    require_fault(m.bar_iova, "unmap")?;
    drop(m.host);
    Ok(())
}

/// The forced revoke of the BAR: the importer is told and the library's mapping torn down, then
/// the kernel revokes the dma-buf. A second page mapped by file outside the negotiator shows the
/// kernel's own part: iommufd unmaps it when the dma-buf is revoked. DMA to either then faults.
fn revoke_and_check(t: &Taken, bar: &VfioDmaBuf, m: Mapped) -> Result<()> {
    let (domain, edu, host) = (t.domain, t.edu, t.host);
    let (bar_map, bar_iova, host_iova) = (m.bar, m.bar_iova, m.host_iova);
    let raw_iova = domain.alloc_iova(0x1000, edu.mask)?.0;
    let raw = MapPiece {
        phys: PhysAddr(bar.bar().cpu.0 + 0x1000),
        len: 0x1000,
        attrs: MapAttrs::MMIO,
        file: Some(FileSlice {
            file: bar.file().clone(),
            offset: 0x1000,
        }),
    };
    domain.map_piece(Iova(raw_iova), &raw, Access::WRITE)?;
    let report = bar.revoke(t.negotiator)?;
    println!(
        "revoked the dma-buf: {} mapping(s) torn down, {:#x} bytes unmapped, then memory decoding off",
        report.mappings, report.bytes_unmapped
    );
    if report.mappings != 1 || bar_map.segments().is_ok() {
        return Err(fail("the forced revoke did not take down the BAR mapping"));
    }
    if domain.translate(Iova(bar_iova)).is_some() {
        return Err(fail("the IOVA still translates after the revoke"));
    }
    host.write(0x800, &pattern(SEED_B))?;
    edu.dma(host_iova + 0x800, false)?;
    edu.dma(bar_iova, true)?;
    require_fault(bar_iova, "the forced revoke")?;
    edu.dma(raw_iova, true)?;
    require_fault(raw_iova, "the kernel revoked the dma-buf")?;
    // The area is still in the IOAS (iommufd only took it out of the hardware): unmap it.
    domain.unmap(Iova(raw_iova), 0x1000)?;
    domain.free_iova(Iova(raw_iova), 0x1000)?;
    drop(bar_map);
    drop(m.host);
    Ok(())
}

fn check_host_file(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let got = bytes
        .get(..LEN as usize)
        .ok_or_else(|| fail(format!("{} is shorter than {LEN} bytes", path.display())))?;
    if got == pattern(SEED_B).as_slice() {
        return Err(fail("the DMA sent after unmap landed in the host file"));
    }
    if got != pattern(SEED_A).as_slice() {
        let first = got
            .iter()
            .zip(pattern(SEED_A))
            .position(|(g, w)| *g != w)
            .unwrap_or(0);
        return Err(fail(format!(
            "{}: byte {first} is {:#04x}, the pattern has {:#04x}",
            path.display(),
            got[first],
            pattern(SEED_A)[first]
        )));
    }
    // Nothing else was ever meant to land: in the iommufd run, the second page (BAR offset
    // 0x1000) is the one mapped by file outside the negotiator and DMA'd to only after the
    // revoke. The rest of the file must still be the zeros it was created with.
    if let Some(at) = bytes[LEN as usize..].iter().position(|&b| b != 0) {
        let at = at + LEN as usize;
        return Err(fail(format!(
            "{}: byte {at:#x} is {:#04x}; only the first {LEN} bytes were to be written",
            path.display(),
            bytes[at]
        )));
    }
    println!(
        "{}: holds the {LEN} bytes edu wrote, and zeros after them",
        path.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("guest") => guest().map(|backend| println!("{PASS} {backend}")),
        Some("check-host-file") if args.len() == 3 => check_host_file(Path::new(&args[2])),
        _ => {
            eprintln!("usage: vfio_edu guest | vfio_edu check-host-file FILE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("P2PDMA-VM-TEST: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
