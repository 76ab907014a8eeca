//! A simulated importer (an RDMA NIC, with or without ODP) driving its [`DmaEngine`].

use crate::dma::DmaEngine;
use crate::events::Event;
use crate::faults::FaultPoint;
use crate::platform::MockPlatform;
use crate::route::DmaFault;
use p2p_core::addr::DmaAddr;
use p2p_core::traits::{DmaImporter, ImporterCaps, Invalidation};
use p2p_core::{Error, PciAddr, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A NIC with a [`DmaEngine`]: its DMA goes through [`MockPlatform::route`], the sanitizer checks
/// every access, and nothing touches memory unless every page of the request is claimed. Its
/// invalidations are acknowledged unless the fault injector says otherwise.
#[derive(Debug)]
pub struct MockNic {
    device: PciAddr,
    caps: ImporterCaps,
    platform: Arc<MockPlatform>,
    engine: DmaEngine,
    invalidations: AtomicU64,
}

impl MockNic {
    pub(crate) fn new(device: PciAddr, caps: ImporterCaps, platform: Arc<MockPlatform>) -> Self {
        Self {
            device,
            caps,
            engine: DmaEngine::new(device, caps.dma_mask, platform.clone()),
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
        self.engine.dma_write(addr, data)
    }

    /// Reads `len` bytes at `addr` (memory → device).
    pub fn dma_read(&self, addr: DmaAddr, len: usize) -> std::result::Result<Vec<u8>, DmaFault> {
        self.engine.dma_read(addr, len)
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
