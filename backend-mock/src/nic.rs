//! A simulated importer (an RDMA NIC, with or without ODP) and its DMA engine.

use crate::events::Event;
use crate::faults::FaultPoint;
use crate::platform::MockPlatform;
use crate::route::{DmaFault, Routed, Target};
use crate::sanitizer::FindingKind;
use p2p_core::addr::DmaAddr;
use p2p_core::page::SZ_4K;
use p2p_core::traits::{DmaImporter, ImporterCaps, Invalidation};
use p2p_core::{Error, PciAddr, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A NIC with a DMA engine. Its DMA goes through [`MockPlatform::route`], the sanitizer checks
/// every access, and nothing touches memory unless every page of the request is claimed.
#[derive(Debug)]
pub struct MockNic {
    device: PciAddr,
    caps: ImporterCaps,
    platform: Arc<MockPlatform>,
    invalidations: AtomicU64,
}

impl MockNic {
    pub(crate) fn new(device: PciAddr, caps: ImporterCaps, platform: Arc<MockPlatform>) -> Self {
        Self {
            device,
            caps,
            platform,
            invalidations: AtomicU64::new(0),
        }
    }

    /// Invalidations this NIC acknowledged.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }

    /// Writes `data` at `addr` (device → memory).
    pub fn dma_write(&self, addr: DmaAddr, data: &[u8]) -> std::result::Result<(), DmaFault> {
        let pieces = self.resolve(addr.0, data.len() as u64, true)?;
        let mut done = 0usize;
        for (routed, len) in pieces {
            self.platform
                .memory()
                .write(phys(routed), &data[done..done + len]);
            done += len;
        }
        Ok(())
    }

    /// Reads `len` bytes at `addr` (memory → device).
    pub fn dma_read(&self, addr: DmaAddr, len: usize) -> std::result::Result<Vec<u8>, DmaFault> {
        let pieces = self.resolve(addr.0, len as u64, false)?;
        let mut out = Vec::with_capacity(len);
        for (routed, n) in pieces {
            out.extend(self.platform.memory().read(phys(routed), n));
        }
        Ok(out)
    }

    /// Routes every page of a request before any byte moves.
    fn resolve(
        &self,
        addr: u64,
        len: u64,
        write: bool,
    ) -> std::result::Result<Vec<(Routed, usize)>, DmaFault> {
        let log = |outcome: String| {
            self.platform.log().push(Event::Dma {
                device: self.device.to_string(),
                addr,
                len,
                write,
                outcome,
            });
        };
        let mask = self.caps.dma_mask;
        if len > 0 && addr.checked_add(len - 1).is_none_or(|last| last > mask) {
            let f = self.platform.sanitizer().finding(
                FindingKind::AboveMask,
                self.device,
                addr,
                len,
                None,
            );
            self.platform.sanitizer().report(f);
            log("refused: above the DMA mask".into());
            return Err(DmaFault::AboveMask {
                device: self.device,
                addr,
                mask,
            });
        }
        if len > 0 {
            self.platform
                .sanitizer()
                .check_dma(self.device, addr, len, write);
        }
        let mut pieces = Vec::new();
        let mut at = addr;
        let end = addr + len;
        while at < end {
            let n = ((at | (SZ_4K - 1)) + 1).min(end) - at;
            match self.platform.route(self.device, at, write) {
                Ok(r) => pieces.push((r, n as usize)),
                Err(e) => {
                    log(format!("FAILED {e}"));
                    return Err(e);
                }
            }
            at += n;
        }
        log(pieces
            .first()
            .map_or("empty".into(), |(r, _)| format!("ok -> {r}")));
        Ok(pieces)
    }
}

fn phys(r: Routed) -> u64 {
    match r.target {
        Target::Ram(p) => p,
        Target::Bar { phys, .. } => phys,
    }
}

impl DmaImporter for MockNic {
    fn device(&self) -> PciAddr {
        self.device
    }

    fn caps(&self) -> ImporterCaps {
        self.caps
    }

    fn invalidate(&self, notice: &Invalidation) -> Result<()> {
        let name = self.device.to_string();
        let log = self.platform.log();
        let failed = self.platform.faults().should_fail(
            FaultPoint::ImporterInvalidate,
            || format!("{name} could not quiesce mapping {}", notice.mapping),
            log,
        );
        log.push(Event::Invalidate {
            importer: name,
            mapping: notice.mapping,
            seq: notice.seq,
            ok: !failed,
        });
        if failed {
            return Err(Error::Injected {
                point: "importer invalidation",
                detail: format!(
                    "{} could not quiesce mapping {}",
                    self.device, notice.mapping
                ),
            });
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
