//! A DMA engine on the simulated machine: what a device's descriptors would make it do, routed
//! as PCIe routes it ([`MockPlatform::route`]), checked by the sanitizer, and applied to the
//! machine's bytes only when every page of the request is claimed. [`MockNic`](crate::MockNic)
//! has one; an out-of-tree importer gets its own from [`Machine::dma_engine`](crate::Machine::dma_engine).

use crate::events::Event;
use crate::platform::MockPlatform;
use crate::route::{DmaFault, Routed, Target};
use crate::sanitizer::FindingKind;
use p2p_core::addr::DmaAddr;
use p2p_core::page::SZ_4K;
use p2p_core::PciAddr;
use std::sync::Arc;

/// The DMA engine of one device: reads and writes by DMA address, as the device's requests
/// would reach memory. Above the device's DMA mask a request is refused (and reported) before
/// it leaves the device.
#[derive(Debug, Clone)]
pub struct DmaEngine {
    device: PciAddr,
    dma_mask: u64,
    platform: Arc<MockPlatform>,
}

impl DmaEngine {
    pub(crate) fn new(device: PciAddr, dma_mask: u64, platform: Arc<MockPlatform>) -> Self {
        Self {
            device,
            dma_mask,
            platform,
        }
    }

    /// The device whose requests these are.
    pub fn device(&self) -> PciAddr {
        self.device
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
        let mask = self.dma_mask;
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
