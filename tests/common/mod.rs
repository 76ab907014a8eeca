//! Shared setup for the mock-backend tests.
#![allow(dead_code)]

use backend_mock::{Machine, MockConfig, MockGpu, MockNic, SanitizerMode};
use p2pdma::prelude::*;
use std::sync::Arc;

pub const GPU: &str = "0000:03:00.0";
pub const GPU1: &str = "0000:04:00.0";
pub const NIC: &str = "0000:05:00.0";
pub const NVME: &str = "0000:06:00.0";
pub const RW: Access = Access::READ.union(Access::WRITE);

pub fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

pub fn collect(seed: u64) -> MockConfig {
    MockConfig {
        sanitizer: SanitizerMode::Collect,
        ..MockConfig::new(seed)
    }
}

pub fn caps(flags: ImporterFlags, bits: u32) -> ImporterCaps {
    ImporterCaps {
        flags,
        dma_mask: dma_mask(bits),
        max_segment: 0,
    }
}

pub fn odp() -> ImporterCaps {
    caps(ImporterFlags::ODP | ImporterFlags::P2P, 64)
}

pub fn range(off: u64, len: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(off), len).unwrap()
}

/// A GPU, an ODP NIC, and the trait objects the negotiator takes.
pub struct Pair {
    pub gpu: Arc<MockGpu>,
    pub nic: Arc<MockNic>,
    pub exporter: Arc<dyn MemoryExporter>,
    pub importer: Arc<dyn DmaImporter>,
}

pub fn pair(m: &Machine, gpu_pages: u64, nic_caps: ImporterCaps) -> Pair {
    let gpu = m
        .gpu(a(GPU), gpu_pages * 4096, 1024, MemoryKind::MOVABLE)
        .unwrap();
    let nic = m.nic(a(NIC), nic_caps).unwrap();
    Pair {
        exporter: gpu.clone(),
        importer: nic.clone(),
        gpu,
        nic,
    }
}

impl Pair {
    pub fn map(&self, m: &Machine, off: u64, len: u64, access: Access) -> Result<Mapping> {
        m.negotiator().map(
            &self.exporter,
            &self.importer,
            range(off, len),
            access,
            &Policy::default(),
        )
    }
}
