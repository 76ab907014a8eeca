//! The ordered event log: every map, unmap, flush, invalidation, DMA and injected fault, in the
//! order they happened. Names, never process-global ids, so the same seed gives the same log
//! byte for byte.

use crate::faults::FaultPoint;
use parking_lot::Mutex;
use std::fmt;

/// One thing that happened in the simulated machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Pages mapped into a domain.
    Map {
        /// The domain.
        domain: String,
        /// First IOVA.
        iova: u64,
        /// First physical address.
        phys: u64,
        /// Bytes.
        len: u64,
    },
    /// Pages unmapped.
    Unmap {
        /// The domain.
        domain: String,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
        /// Bytes actually unmapped.
        unmapped: u64,
    },
    /// An IOTLB flush: done at once (strict), queued (lazy), or the queue drained.
    Flush {
        /// The domain.
        domain: String,
        /// `strict`, `queued` or `drained`.
        what: &'static str,
    },
    /// IOVA space allocated.
    IovaAlloc {
        /// The domain.
        domain: String,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
    },
    /// IOVA space freed (`deferred` in lazy mode, until the queue drains).
    IovaFree {
        /// The domain.
        domain: String,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
        /// Whether the free waits for the flush queue.
        deferred: bool,
    },
    /// An exporter granted a range.
    Grant {
        /// The exporter (device address or `host`).
        exporter: String,
        /// The grant number.
        grant: u64,
        /// Offset in the memory object.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Whether the grant pins.
        pinned: bool,
    },
    /// A grant came back.
    Release {
        /// The exporter (device address or `host`).
        exporter: String,
        /// The grant number.
        grant: u64,
    },
    /// An exporter moved its memory to host RAM.
    Migrate {
        /// The exporter (device address or `host`).
        exporter: String,
        /// Bytes.
        len: u64,
    },
    /// An exporter revoked its memory.
    Revoke {
        /// The exporter (device address or `host`).
        exporter: String,
    },
    /// A mapping went live.
    Established {
        /// The mapping id.
        mapping: u64,
        /// The importer.
        importer: String,
        /// The plan's strategy.
        strategy: String,
        /// Scatter-list segments.
        segments: usize,
    },
    /// A mapping went away.
    TornDown {
        /// The mapping id.
        mapping: u64,
        /// The importer.
        importer: String,
        /// Why.
        cause: String,
    },
    /// An importer was told to stop using a mapping.
    Invalidate {
        /// The importer.
        importer: String,
        /// The mapping id.
        mapping: u64,
        /// The sequence number during the invalidation.
        seq: u64,
        /// Whether the importer stopped.
        ok: bool,
    },
    /// A DMA request and what became of it.
    Dma {
        /// The device.
        device: String,
        /// The address.
        addr: u64,
        /// Bytes.
        len: u64,
        /// Write (device → memory) or read.
        write: bool,
        /// Where it went, or why it failed.
        outcome: String,
    },
    /// A fault the injector made happen.
    Fault {
        /// The injection point.
        point: FaultPoint,
        /// What failed.
        detail: String,
    },
    /// A sanitizer finding.
    Finding {
        /// The finding.
        summary: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Map {
                domain,
                iova,
                phys,
                len,
            } => write!(
                f,
                "map {domain} iova {iova:#x} -> phys {phys:#x} len {len:#x}"
            ),
            Event::Unmap {
                domain,
                iova,
                len,
                unmapped,
            } => {
                write!(
                    f,
                    "unmap {domain} iova {iova:#x} len {len:#x} unmapped {unmapped:#x}"
                )
            }
            Event::Flush { domain, what } => write!(f, "flush {domain} {what}"),
            Event::IovaAlloc { domain, iova, len } => {
                write!(f, "iova-alloc {domain} {iova:#x} len {len:#x}")
            }
            Event::IovaFree {
                domain,
                iova,
                len,
                deferred,
            } => {
                write!(
                    f,
                    "iova-free {domain} {iova:#x} len {len:#x}{}",
                    if *deferred { " deferred" } else { "" }
                )
            }
            Event::Grant {
                exporter,
                grant,
                offset,
                len,
                pinned,
            } => write!(
                f,
                "grant {exporter} #{grant} offset {offset:#x} len {len:#x}{}",
                if *pinned { " pinned" } else { "" }
            ),
            Event::Release { exporter, grant } => write!(f, "release {exporter} #{grant}"),
            Event::Migrate { exporter, len } => {
                write!(f, "migrate {exporter} {len:#x} bytes to host RAM")
            }
            Event::Revoke { exporter } => write!(f, "revoke {exporter}"),
            Event::Established {
                mapping,
                importer,
                strategy,
                segments,
            } => {
                write!(
                    f,
                    "established mapping {mapping} for {importer}: {strategy}, {segments} segments"
                )
            }
            Event::TornDown {
                mapping,
                importer,
                cause,
            } => write!(f, "torn down mapping {mapping} of {importer}: {cause}"),
            Event::Invalidate {
                importer,
                mapping,
                seq,
                ok,
            } => write!(
                f,
                "invalidate {importer} mapping {mapping} seq {seq}: {}",
                if *ok { "stopped" } else { "FAILED" }
            ),
            Event::Dma {
                device,
                addr,
                len,
                write,
                outcome,
            } => write!(
                f,
                "dma {device} {} {addr:#x} len {len:#x}: {outcome}",
                if *write { "write" } else { "read" }
            ),
            Event::Fault { point, detail } => write!(f, "injected fault ({point}): {detail}"),
            Event::Finding { summary } => write!(f, "SANITIZER {summary}"),
        }
    }
}

/// The log. Indices are stable: findings refer to the event that created a mapping by index.
#[derive(Debug, Default)]
pub struct EventLog(Mutex<Vec<Event>>);

impl EventLog {
    /// Appends, returning the event's index.
    pub fn push(&self, e: Event) -> usize {
        tracing::trace!(event = %e, "mock");
        let mut v = self.0.lock();
        v.push(e);
        v.len() - 1
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().clone()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether nothing happened yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log as text, one numbered line per event.
    pub fn render(&self) -> String {
        self.0
            .lock()
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{i:5} {e}\n"))
            .collect()
    }
}
