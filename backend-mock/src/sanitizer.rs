//! The DMA sanitizer, modelled on Linux's DMA-API debugging (`kernel/dma/debug.c`): it learns
//! every live DMA window from the negotiator (as a [`MappingObserver`]) and checks every DMA
//! access and every IOMMU map/unmap against them.

use crate::events::{Event, EventLog};
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, DmaAddr};
use p2p_core::negotiate::{MappingEvent, MappingObserver, TeardownCause};
use p2p_core::traits::InvalidationKind;
use p2p_core::PciAddr;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// DMA to an address no live mapping of the device covers.
    OutsideMapping,
    /// DMA through a mapping that was unmapped (dropped, or invalidated by a move).
    AfterUnmap,
    /// DMA through a mapping whose memory was revoked.
    AfterRevoke,
    /// DMA translated by an IOTLB entry whose page-table entry is gone (lazy flush window).
    StaleIotlb,
    /// A read through a write-only mapping, a write through a read-only one.
    WrongDirection,
    /// An unmap of IOVAs that are not mapped.
    DoubleUnmap,
    /// An unmap whose size differs from the map it undoes.
    WrongUnmapSize,
    /// A mapping still live when the machine went away.
    Leaked,
    /// An address above the device's DMA mask.
    AboveMask,
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FindingKind::OutsideMapping => "DMA outside any mapping",
            FindingKind::AfterUnmap => "DMA after unmap",
            FindingKind::AfterRevoke => "DMA after revoke",
            FindingKind::StaleIotlb => "DMA through a stale IOTLB entry",
            FindingKind::WrongDirection => "DMA in a direction the mapping does not allow",
            FindingKind::DoubleUnmap => "unmap of IOVAs that are not mapped",
            FindingKind::WrongUnmapSize => "unmap of another size than its map",
            FindingKind::Leaked => "mapping leaked",
            FindingKind::AboveMask => "address above the DMA mask",
        })
    }
}

/// One problem the sanitizer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// The device (importer) involved.
    pub device: PciAddr,
    /// The address involved (DMA address or IOVA).
    pub addr: u64,
    /// Bytes involved.
    pub len: u64,
    /// The mapping involved, if one is known.
    pub mapping: Option<u64>,
    /// Index in the event log of the event that created that mapping.
    pub created_by: Option<usize>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: device {} address {:#x} len {:#x}",
            self.kind, self.device, self.addr, self.len
        )?;
        if let Some(m) = self.mapping {
            write!(f, " mapping {m}")?;
        }
        if let Some(e) = self.created_by {
            write!(f, " (created by event {e})")?;
        }
        Ok(())
    }
}

/// What the sanitizer does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizerMode {
    /// Panic at the first one (for tests of legal sequences).
    Panic,
    /// Keep them all for [`Sanitizer::findings`].
    Collect,
}

#[derive(Debug, Clone)]
pub(crate) struct Window {
    mapping: u64,
    range: AddrRange<DmaAddr>,
    access: Access,
    event: usize,
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<PciAddr, Vec<Window>>,
    /// Recently torn-down windows, with whether the memory was revoked.
    dead: HashMap<PciAddr, Vec<(Window, bool)>>,
    findings: Vec<Finding>,
}

/// How many dead windows per device are remembered (older ones report as outside any mapping).
const DEAD_WINDOWS: usize = 4096;

/// The sanitizer.
#[derive(Debug)]
pub struct Sanitizer {
    mode: SanitizerMode,
    log: Arc<EventLog>,
    state: Mutex<State>,
}

impl Sanitizer {
    /// A sanitizer writing findings to `log`.
    pub fn new(mode: SanitizerMode, log: Arc<EventLog>) -> Self {
        Self {
            mode,
            log,
            state: Mutex::default(),
        }
    }

    /// Findings so far (Collect mode).
    pub fn findings(&self) -> Vec<Finding> {
        self.state.lock().findings.clone()
    }

    /// Records a finding: logs it, then panics or keeps it.
    pub fn report(&self, finding: Finding) {
        self.log.push(Event::Finding {
            summary: finding.to_string(),
        });
        match self.mode {
            SanitizerMode::Panic => {
                if !std::thread::panicking() {
                    panic!("DMA sanitizer: {finding}");
                }
            }
            SanitizerMode::Collect => self.state.lock().findings.push(finding),
        }
    }

    /// Checks a DMA of `len` bytes at `addr` by `device`; reports and returns the finding, if any.
    pub fn check_dma(
        &self,
        device: PciAddr,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Option<FindingKind> {
        let need = if write { Access::WRITE } else { Access::READ };
        let finding = {
            let s = self.state.lock();
            let Ok(req) = AddrRange::new(DmaAddr(addr), len) else {
                return Some(FindingKind::OutsideMapping);
            };
            let live = s.live.get(&device).into_iter().flatten();
            let mut covering = live.filter(|w| w.range.contains_range(&req));
            let first = covering.clone().next().cloned();
            match first {
                _ if covering.any(|w| w.access.contains(need)) => None,
                Some(w) => {
                    Some(self.finding(FindingKind::WrongDirection, device, addr, len, Some(&w)))
                }
                None => {
                    let dead = s
                        .dead
                        .get(&device)
                        .into_iter()
                        .flatten()
                        .rev()
                        .find(|(w, _)| w.range.overlaps(&req));
                    Some(match dead {
                        Some((w, true)) => {
                            self.finding(FindingKind::AfterRevoke, device, addr, len, Some(w))
                        }
                        Some((w, false)) => {
                            self.finding(FindingKind::AfterUnmap, device, addr, len, Some(w))
                        }
                        None => self.finding(FindingKind::OutsideMapping, device, addr, len, None),
                    })
                }
            }
        };
        let kind = finding.as_ref().map(|f| f.kind);
        if let Some(f) = finding {
            self.report(f);
        }
        kind
    }

    /// The live mapping of `device` covering `addr`, if any (for findings made elsewhere).
    pub fn mapping_at(&self, device: PciAddr, addr: u64) -> Option<(u64, usize)> {
        let s = self.state.lock();
        s.live
            .get(&device)?
            .iter()
            .chain(s.dead.get(&device).into_iter().flatten().map(|(w, _)| w))
            .find(|w| w.range.contains(DmaAddr(addr)))
            .map(|w| (w.mapping, w.event))
    }

    /// Reports every window still live as leaked; returns how many.
    pub fn check_leaks(&self) -> usize {
        let leaked: Vec<(PciAddr, Window)> = {
            let s = self.state.lock();
            let mut v: Vec<(PciAddr, Window)> = s
                .live
                .iter()
                .flat_map(|(d, ws)| ws.iter().map(|w| (*d, w.clone())))
                .collect();
            v.sort_by_key(|(d, w)| (*d, w.mapping, w.range.start()));
            v
        };
        for (d, w) in &leaked {
            self.report(self.finding(
                FindingKind::Leaked,
                *d,
                w.range.start().0,
                w.range.len(),
                Some(w),
            ));
        }
        leaked.len()
    }

    /// A finding about `device`, naming `window`'s mapping and creating event if given.
    pub(crate) fn finding(
        &self,
        kind: FindingKind,
        device: PciAddr,
        addr: u64,
        len: u64,
        window: Option<&Window>,
    ) -> Finding {
        Finding {
            kind,
            device,
            addr,
            len,
            mapping: window.map(|w| w.mapping),
            created_by: window.map(|w| w.event),
        }
    }
}

impl MappingObserver for Sanitizer {
    fn established(&self, ev: &MappingEvent) {
        let event = self.log.push(Event::Established {
            mapping: ev.mapping,
            importer: ev.importer.to_string(),
            strategy: ev.strategy.to_string(),
            segments: ev.segments.len(),
        });
        let mut s = self.state.lock();
        let live = s.live.entry(ev.importer).or_default();
        for seg in &ev.segments {
            if let Ok(range) = AddrRange::new(seg.addr, seg.len) {
                live.push(Window {
                    mapping: ev.mapping,
                    range,
                    access: ev.access,
                    event,
                });
            }
        }
    }

    fn torn_down(&self, ev: &MappingEvent, cause: TeardownCause) {
        self.log.push(Event::TornDown {
            mapping: ev.mapping,
            importer: ev.importer.to_string(),
            cause: cause.to_string(),
        });
        let revoked = cause == TeardownCause::Invalidated(InvalidationKind::Revoke);
        let mut s = self.state.lock();
        let gone: Vec<Window> = match s.live.get_mut(&ev.importer) {
            Some(ws) => {
                let (gone, keep) = ws.drain(..).partition(|w| w.mapping == ev.mapping);
                *ws = keep;
                gone
            }
            None => Vec::new(),
        };
        let dead = s.dead.entry(ev.importer).or_default();
        dead.extend(gone.into_iter().map(|w| (w, revoked)));
        if dead.len() > DEAD_WINDOWS {
            let extra = dead.len() - DEAD_WINDOWS;
            dead.drain(..extra);
        }
    }
}
