//! The one error type of p2p-core. Every variant names the value that was wrong, so that a log
//! line explains itself without the call site.

use crate::negotiate::Reason;
use crate::pci::PciAddr;
use crate::traits::ExporterId;
use std::sync::Arc;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in p2p-core and the backends built on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `addr + len` does not fit in 64 bits.
    #[error("{kind} range at {addr:#x} of {len:#x} bytes wraps past the end of the address space")]
    AddressOverflow {
        /// Address kind.
        kind: &'static str,
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A range whose end lies before its start.
    #[error("{kind} range end {end:#x} lies before its start {start:#x}")]
    InvalidRange {
        /// Address kind.
        kind: &'static str,
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// A range that does not fit inside the range it must lie in.
    #[error("{kind} range {start:#x}+{len:#x} lies outside {limit_start:#x}+{limit_len:#x}")]
    OutOfBounds {
        /// Address kind.
        kind: &'static str,
        /// Start of the offending range.
        start: u64,
        /// Its length.
        len: u64,
        /// Start of the enclosing range.
        limit_start: u64,
        /// Length of the enclosing range.
        limit_len: u64,
    },
    /// A value that must be aligned is not.
    #[error("{what} {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// What was misaligned ("iova", "length", ...).
        what: &'static str,
        /// The value.
        value: u64,
        /// The required alignment.
        align: u64,
    },
    /// A zero-length request where bytes are needed.
    #[error("{what} has zero length")]
    EmptyRange {
        /// What was empty.
        what: &'static str,
    },
    /// Text that is not a PCI address in lspci form.
    #[error("{input:?} is not a PCI address of the form 0000:3b:00.0: {reason}")]
    InvalidPciAddr {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A device the topology does not hold.
    #[error("device {0} is not in the topology")]
    UnknownDevice(PciAddr),
    /// A device that is in the topology but is not an endpoint.
    #[error("device {0} is a bridge or port, not an endpoint")]
    NotAnEndpoint(PciAddr),
    /// A topology that cannot be built as described.
    #[error("invalid topology: {0}")]
    InvalidTopology(String),
    /// A topology file that cannot be read.
    #[error("topology file {path}: {message}")]
    TopologyFile {
        /// The file (or `<input>`).
        path: String,
        /// What went wrong, with line and column where known.
        message: String,
    },
    /// A sysfs file or directory that cannot be read or does not hold what Linux writes there.
    #[error("sysfs {path}: {message}")]
    Sysfs {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Input that a reader refuses before it can exhaust memory or stack: a file larger than
    /// the reader's cap, a tree nested deeper than a PCI hierarchy can be, a directory with more
    /// entries than a PCI bus can hold. The limits are in `topology::limits`.
    #[error("{path}{}: {what} exceeds the limit of {limit}", at_line(.line))]
    InputLimit {
        /// The file or directory (or `<input>` for text given in memory).
        path: String,
        /// The line the limit was hit at, where the input has lines.
        line: Option<u32>,
        /// What was too large ("file size in bytes", "nesting depth", ...).
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A named preset that does not exist.
    #[error("no topology preset named {name:?} (known: {known})")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The names that exist, comma separated.
        known: String,
    },
    /// The negotiator found no acceptable way to map.
    #[error("no DMA plan for {importer} to reach {exporter}: {refusal}")]
    Refused {
        /// The exporter.
        exporter: ExporterId,
        /// The importer.
        importer: PciAddr,
        /// The first rule that failed.
        refusal: Reason,
    },
    /// The exporter's BAR window (or memory pool) cannot hold the request.
    #[error("{exporter}: window full, {requested:#x} bytes requested, {available:#x} free")]
    WindowFull {
        /// The exporter.
        exporter: ExporterId,
        /// Bytes requested.
        requested: u64,
        /// Bytes still free.
        available: u64,
    },
    /// The exporter revoked its memory: no new grants or mappings.
    #[error("{0} has revoked its memory")]
    Revoked(ExporterId),
    /// A grant that the exporter does not know (released, or from another exporter).
    #[error("{exporter} holds no grant {grant}")]
    UnknownGrant {
        /// The exporter.
        exporter: ExporterId,
        /// The grant id.
        grant: u64,
    },
    /// Memory that cannot be pinned was asked to be.
    #[error("{exporter} cannot pin its memory: {reason}")]
    NotPinnable {
        /// The exporter.
        exporter: ExporterId,
        /// Why.
        reason: &'static str,
    },
    /// A revoke or move of a range that a pinned mapping holds.
    #[error("{exporter}: range {range} is pinned by importer {importer} and cannot move")]
    Pinned {
        /// The exporter.
        exporter: ExporterId,
        /// The range asked to move.
        range: String,
        /// The importer holding the pin.
        importer: PciAddr,
    },
    /// The IOMMU domain has no free IOVA range of that size under the limit.
    #[error("no free IOVA range of {len:#x} bytes below {limit:#x}")]
    IovaExhausted {
        /// Bytes asked.
        len: u64,
        /// The highest usable address.
        limit: u64,
    },
    /// A map over an IOVA that is already mapped.
    #[error("iova {0:#x} is already mapped")]
    AlreadyMapped(u64),
    /// An IOVA that nothing maps.
    #[error("iova {0:#x} is not mapped")]
    NotMapped(u64),
    /// An operation the domain's kind does not allow (map on an identity domain, ...).
    #[error("{op} is not possible on a {kind} domain")]
    WrongDomainKind {
        /// The operation.
        op: &'static str,
        /// The domain kind.
        kind: &'static str,
    },
    /// A range that touches a reserved region of the domain.
    #[error("iova range {start:#x}+{len:#x} touches reserved region {region}")]
    Reserved {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
        /// The region's name.
        region: String,
    },
    /// A DMA address that the device cannot emit.
    #[error("device {device}: address {addr:#x} is above its DMA mask {mask:#x}")]
    DmaMaskExceeded {
        /// The device.
        device: PciAddr,
        /// The address.
        addr: u64,
        /// Its mask.
        mask: u64,
    },
    /// An importer could not stop using a range it was told to give up.
    #[error("importer {device} failed to invalidate {range}: {reason}")]
    InvalidateFailed {
        /// The importer.
        device: PciAddr,
        /// The range.
        range: String,
        /// What it reported.
        reason: String,
    },
    /// A mapping whose memory was invalidated (moved or revoked); an ODP importer re-faults.
    #[error("mapping {0} was invalidated; re-fault to get the memory's new place")]
    Invalidated(u64),
    /// A mapping that cannot be re-faulted (its importer lacks ODP or the memory was revoked).
    #[error("mapping {mapping} cannot be re-faulted: {reason}")]
    CannotRefault {
        /// The mapping.
        mapping: u64,
        /// Why.
        reason: &'static str,
    },
    /// A virtual address with nothing behind it, or a VMA that cannot be faulted (PFNMAP).
    #[error("virtual address {va:#x}: {reason}")]
    Fault {
        /// The address.
        va: u64,
        /// Why.
        reason: &'static str,
    },
    /// A virtual page that cannot be pinned for a non-ODP importer.
    #[error("virtual address {va:#x} cannot be pinned for importer {importer}: {reason}")]
    CannotPin {
        /// The address.
        va: u64,
        /// The importer.
        importer: PciAddr,
        /// Why.
        reason: &'static str,
    },
    /// A plan made while the memory was in one place was used after it moved.
    #[error("plan for {exporter} was made while its memory was {planned}, but it is now {now}: negotiate again")]
    StalePlan {
        /// The exporter.
        exporter: ExporterId,
        /// Where the plan saw the memory.
        planned: String,
        /// Where the memory is now.
        now: String,
    },

    /// A mapping could not be published because invalidations kept overlapping its set-up.
    #[error("mapping of {exporter} range {range} gave up after {attempts} attempts: its memory was invalidated during every one")]
    Contended {
        /// The exporter.
        exporter: ExporterId,
        /// The range being mapped.
        range: String,
        /// How many set-ups were built and thrown away.
        attempts: u32,
    },

    /// A domain had no memory left for the page tables a map needs; nothing of the map stays.
    #[error("no page-table memory to map iova {iova:#x}")]
    NoTableMemory {
        /// The IOVA being mapped when the allocation failed.
        iova: u64,
    },

    /// An IOTLB invalidation did not complete; IOVAs unmapped before it stay out of the
    /// allocator until a flush succeeds.
    #[error("IOTLB flush failed: {detail}")]
    FlushTimeout {
        /// What timed out.
        detail: String,
    },

    /// The kernel (or a model of it) answered a call with something malformed.
    #[error("{call}: malformed reply: {detail}")]
    KernelReply {
        /// The call.
        call: &'static str,
        /// What was wrong with the reply, with its values.
        detail: String,
    },

    /// A plan used for another exporter or importer than it was made for.
    #[error("plan made for {plan} used for {given}")]
    PlanMismatch {
        /// What the plan was for.
        plan: String,
        /// What it was given.
        given: String,
    },
    /// A fault injected on purpose (a test's countdown, a seeded rate): never a real failure.
    #[error("injected fault at {point}: {detail}")]
    Injected {
        /// Where it was injected (a page store, a flush, an importer's invalidation).
        point: &'static str,
        /// What it hit (an address, a device).
        detail: String,
    },
    /// A call into the operating system failed: which call, on what, with the OS error (and the
    /// `std::io::Error` it came as, where there was one).
    #[error("{call} on {target} failed: {}{hint}", os_text(*.errno, .source))]
    Os {
        /// The call (`mlock`, `pread`, `VFIO_IOMMU_MAP_DMA`).
        call: &'static str,
        /// What it was applied to (a path, a length, an IOVA range), with its values.
        target: String,
        /// The OS error number, if the OS gave one.
        errno: Option<i32>,
        /// What would help, when the error number says (` (raise RLIMIT_MEMLOCK ...)`), or "".
        hint: &'static str,
        /// The error as the standard library reported it.
        source: Option<IoSource>,
    },
    /// An unmap whose range would cut a larger page: refused whole, nothing unmapped (Linux
    /// never splits a large page on unmap).
    #[error("unmap of {iova:#x}+{len:#x} would split the {page_size:#x}-byte page at {page_start:#x}; unmap whole pages")]
    WouldSplit {
        /// First IOVA of the unmap.
        iova: u64,
        /// Its length.
        len: u64,
        /// First IOVA of the page it would cut.
        page_start: u64,
        /// That page's size.
        page_size: u64,
    },
    /// Memory to map overlaps memory already registered with a domain (a VFIO domain maps only
    /// registered windows, each at most once).
    #[error("window {start:#x}+{len:#x} overlaps the window at {other_start:#x}+{other_len:#x} already registered")]
    WindowOverlap {
        /// The new window's first physical byte.
        start: u64,
        /// Its length.
        len: u64,
        /// The registered window's first physical byte.
        other_start: u64,
        /// Its length.
        other_len: u64,
    },
    /// Physical memory a domain was asked to map lies in no window registered with it.
    #[error("physical {phys:#x}+{len:#x} is in no window registered with the domain (register it first)")]
    NotRegistered {
        /// First physical byte asked for.
        phys: u64,
        /// Length asked for.
        len: u64,
    },
    /// The kernel's page size is not the one this code was built for.
    #[error("the kernel's page size is {found:#x}, this crate assumes {expected:#x}")]
    PageSize {
        /// What the kernel reports.
        found: u64,
        /// What the crate assumes.
        expected: u64,
    },
    /// A device's DMA is translated by an IOMMU that this backend does not drive, so the
    /// addresses it would program fault.
    #[error("device {device}: {why}, so its DMA is translated; bus addresses would fault (use an IOMMU backend)")]
    DeviceTranslated {
        /// The device.
        device: PciAddr,
        /// What says so (its IOMMU group, the kernel's domain type).
        why: String,
    },
    /// Something this process may not do without a privilege it lacks.
    #[error("{what} needs {privilege}: run as root or grant it")]
    NeedsPrivilege {
        /// What was attempted, with its values.
        what: String,
        /// The privilege (`CAP_SYS_ADMIN`).
        privilege: &'static str,
    },
    /// A self-check of a demonstration or example failed (the data read back differs, a plan is
    /// not the one expected).
    #[error("{what} failed: {detail}")]
    CheckFailed {
        /// The step.
        what: &'static str,
        /// What differed, with the values.
        detail: String,
    },
    /// A VFIO object is not in a state the call can use: the kernel answered, but cannot do it.
    #[error("{target}: {problem}")]
    Vfio {
        /// The file, device or call concerned.
        target: String,
        /// What is wrong with it.
        problem: VfioProblem,
    },
    /// An IOMMU map asked for neither read nor write access: a mapping that allows nothing.
    #[error("map at iova {iova:#x} with neither read nor write access")]
    NoAccess {
        /// The IOVA of the map.
        iova: u64,
    },
    /// A backend failure that carries only a description, for out-of-tree backends with nothing
    /// better; no in-tree site uses it (each has a variant a caller can match).
    #[error("{backend}: {message}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What happened.
        message: String,
    },
    /// An exporter whose memory the CPU cannot read or write (bounce buffers need it).
    #[error("{exporter} gives the CPU no access to its memory")]
    NoCpuAccess {
        /// The exporter.
        exporter: ExporterId,
    },
    /// An exporter that cannot allocate fresh memory, only export what it holds.
    #[error("{exporter} cannot allocate memory")]
    CannotAllocate {
        /// The exporter.
        exporter: ExporterId,
    },
    /// An exporter's grant book has no room for another outstanding grant (it numbers them by a
    /// 32-bit slot).
    #[error("no room for another grant of {exporter}: it holds {limit} already")]
    TooManyGrants {
        /// The exporter.
        exporter: ExporterId,
        /// The grants it can hold.
        limit: u64,
    },
    /// The registry shard holding an exporter's mappings has no room for another (it indexes
    /// them by a 32-bit slot).
    #[error("no room for another mapping of {exporter}: its registry shard holds {limit}")]
    TooManyMappings {
        /// The exporter.
        exporter: ExporterId,
        /// The mappings the shard can hold.
        limit: u64,
    },
}

/// The text of an OS error: the standard library's (which names the number), else the number's.
fn os_text(errno: Option<i32>, source: &Option<IoSource>) -> String {
    match (source, errno) {
        (Some(e), _) => e.to_string(),
        (None, Some(n)) => std::io::Error::from_raw_os_error(n).to_string(),
        (None, None) => "no OS error number".into(),
    }
}

impl Error {
    /// [`Error::Os`] for `call` on `target` that failed with `e`.
    pub fn os(call: &'static str, target: impl Into<String>, e: std::io::Error) -> Self {
        Error::Os {
            call,
            target: target.into(),
            errno: e.raw_os_error(),
            hint: "",
            source: Some(IoSource(Arc::new(e))),
        }
    }
}

/// An `std::io::Error` kept as the source of an [`Error`]: shared, so that the error stays
/// `Clone`, and compared by kind and OS error number, so that it stays `Eq`.
#[derive(Debug, Clone)]
pub struct IoSource(pub Arc<std::io::Error>);

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for IoSource {}

impl std::fmt::Display for IoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// It displays as the io::Error itself, so its source is the io::Error's (a report printing the
// chain would say the same thing twice otherwise); the io::Error is `.0`.
impl std::error::Error for IoSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `:12` for a known line, nothing otherwise: `file.xml:12: ...` reads as editors expect.
fn at_line(line: &Option<u32>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_say_the_call_the_target_and_the_errno_and_keep_their_source() {
        let e = Error::os(
            "mlock",
            "0x1000 bytes",
            std::io::Error::from_raw_os_error(12),
        );
        assert!(matches!(
            e,
            Error::Os {
                errno: Some(12),
                ..
            }
        ));
        let text = e.to_string();
        assert!(text.starts_with("mlock on 0x1000 bytes failed: "), "{text}");
        assert!(text.contains("os error 12"), "{text}");
        // Clone and Eq hold though io::Error has neither.
        assert_eq!(e.clone(), e);
        let other = Error::os(
            "mlock",
            "0x1000 bytes",
            std::io::Error::from_raw_os_error(1),
        );
        assert_ne!(e, other);
        assert!(std::error::Error::source(&e).is_some());
    }
}

/// What [`Error::Vfio`] found wrong with a VFIO object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfioProblem {
    /// `VFIO_GET_API_VERSION` answered a version this code does not speak.
    ApiVersion {
        /// The kernel's.
        found: i64,
        /// Ours.
        expected: i64,
    },
    /// The kernel has no type1v2 IOMMU (`vfio_iommu_type1` not loaded?).
    NoType1v2,
    /// No group is attached to the container yet, so it has no IOMMU.
    NoGroupAttached,
    /// The group is not viable: every device in it must be bound to vfio-pci.
    GroupNotViable,
    /// The device is not a VFIO PCI device.
    NotPciDevice,
    /// The device has no region of that index.
    NoRegion {
        /// The index asked for.
        index: u32,
        /// The regions it has.
        regions: u32,
    },
    /// The BAR cannot be mapped into the process.
    NotMappable {
        /// The region's size.
        size: u64,
        /// Whether the kernel flags it mmap-able.
        mmap_flag: bool,
    },
    /// The device is not attached to this container.
    NotAttached,
    /// The device has no VFIO cdev (`vfio-dev/vfioN` in sysfs): not bound to vfio-pci, or a
    /// kernel without `CONFIG_VFIO_DEVICE_CDEV`.
    NoCdev,
}

impl std::fmt::Display for VfioProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VfioProblem::ApiVersion { found, expected } => {
                write!(f, "VFIO API version {found}, this code speaks {expected}")
            }
            VfioProblem::NoType1v2 => {
                f.write_str("the kernel has no type1v2 IOMMU (vfio_iommu_type1 not loaded?)")
            }
            VfioProblem::NoGroupAttached => {
                f.write_str("no group attached yet, so the container has no IOMMU")
            }
            VfioProblem::GroupNotViable => {
                f.write_str("group is not viable: bind every device in it to vfio-pci")
            }
            VfioProblem::NotPciDevice => f.write_str("not a VFIO PCI device"),
            VfioProblem::NoRegion { index, regions } => {
                write!(f, "no region {index} (it has {regions})")
            }
            VfioProblem::NotMappable { size, mmap_flag } => {
                write!(
                    f,
                    "cannot be mmapped (size {size:#x}, mmap flag {mmap_flag})"
                )
            }
            VfioProblem::NotAttached => f.write_str("not attached to this VFIO container"),
            VfioProblem::NoCdev => f.write_str(
                "has no VFIO cdev (bind it to vfio-pci, on a kernel with CONFIG_VFIO_DEVICE_CDEV)",
            ),
        }
    }
}
