//! The seed story, end to end on the mock: a GPU exports BAR memory, an ODP NIC maps it
//! peer-to-peer and DMAs into it, the GPU migrates the pages to host RAM, the NIC is invalidated,
//! re-faults and keeps working from host RAM; a NIC without ODP is refused on that movable memory
//! with the reason. `p2pctl demo` and `examples/seed_story.rs` run it.

use crate::platform::{Machine, MockConfig};
use crate::sanitizer::SanitizerMode;
use p2p_core::prelude::*;
use p2p_core::rand::SplitMix64;
use p2p_core::topology::presets;
use std::sync::Arc;

/// What the story saw, for callers that check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryReport {
    /// Events the machine logged.
    pub events: usize,
    /// The log, rendered.
    pub log: String,
    /// Sanitizer findings (none on this legal sequence).
    pub findings: usize,
}

const GPU: &str = "0000:03:00.0";
const NIC_ODP: &str = "0000:04:00.0";
const NIC_PINNED: &str = "0000:14:00.0";
const LEN: u64 = 64 << 10;

fn fail(step: &'static str, what: String) -> Error {
    Error::CheckFailed {
        what: step,
        detail: what,
    }
}

/// Runs the story with `seed`, telling each step to `say`.
pub fn run(seed: u64, say: &mut dyn FnMut(&str)) -> Result<StoryReport> {
    let topo = presets::dgx()?;
    let mut config = MockConfig::new(seed);
    config.sanitizer = SanitizerMode::Collect;
    let m = Machine::new(topo, &config)?;
    let mut rng = SplitMix64::new(seed);
    let pattern: Vec<u8> = (0..LEN).map(|_| rng.next_u64() as u8).collect();

    say(&format!(
        "1. GPU {GPU} exports {} KiB of movable device memory through its BAR",
        LEN >> 10
    ));
    let gpu = m.gpu(GPU.parse()?, LEN, 1024, MemoryKind::DEVICE_PRIVATE)?;
    let exporter: Arc<dyn MemoryExporter> = gpu.clone();

    let odp_caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 16 << 10,
    };
    let nic = m.nic(NIC_ODP.parse()?, odp_caps)?;
    let importer: Arc<dyn DmaImporter> = nic.clone();
    let policy = Policy::default();
    let plan = m.negotiator().negotiate(
        &*exporter,
        &*importer,
        Access::READ | Access::WRITE,
        &policy,
    )?;
    say(&format!(
        "2. ODP NIC {NIC_ODP} negotiates: {}",
        plan.strategy
    ));
    for r in &plan.reasons {
        say(&format!("     - {r}"));
    }
    let mapping =
        m.negotiator()
            .establish(&plan, &exporter, &importer, AddrRange::new(Offset(0), LEN)?)?;
    let segments = mapping.segments()?;
    say(&format!(
        "   mapped peer-to-peer: {} segments, first at {}",
        segments.len(),
        segments[0].addr
    ));

    let mut done = 0usize;
    for s in &segments {
        nic.dma_write(s.addr, &pattern[done..done + s.len as usize])
            .map_err(|e| fail("dma into GPU", e.to_string()))?;
        done += s.len as usize;
    }
    if gpu.cpu_read(0, LEN as usize) != pattern {
        return Err(fail(
            "check",
            "the GPU does not hold what the NIC wrote".into(),
        ));
    }
    say(&format!(
        "3. NIC DMA-wrote {} bytes into GPU memory; the GPU reads them back intact",
        LEN
    ));

    let report = m.migrate(&gpu)?;
    say(&format!(
        "4. GPU migrates the pages to host RAM: {} mapping invalidated, NIC acknowledged {} invalidation(s)",
        report.mappings,
        nic.invalidations()
    ));
    if mapping.segments().is_ok() {
        return Err(fail(
            "invalidate",
            "the mapping is still live after the move".into(),
        ));
    }

    let plan = m.negotiator().refault(&mapping, &policy)?;
    let segments = mapping.segments()?;
    say(&format!(
        "5. NIC re-faults: {} ({}), first segment {}",
        plan.strategy,
        plan.reasons
            .last()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        segments[0].addr
    ));
    let mut read = Vec::new();
    for s in &segments {
        read.extend(
            nic.dma_read(s.addr, s.len as usize)
                .map_err(|e| fail("dma from host RAM", e.to_string()))?,
        );
    }
    if read != pattern {
        return Err(fail("check", "the migrated data differs".into()));
    }
    let fresh: Vec<u8> = pattern.iter().map(|b| b ^ 0xff).collect();
    nic.dma_write(segments[0].addr, &fresh[..4096])
        .map_err(|e| fail("dma into host RAM", e.to_string()))?;
    if gpu.cpu_read(0, 4096) != fresh[..4096] {
        return Err(fail(
            "check",
            "a write after the re-fault did not land in host RAM".into(),
        ));
    }
    say("   the NIC keeps working from host RAM: reads the migrated data, writes land there");

    let pinned_caps = ImporterCaps {
        flags: ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let pinned: Arc<dyn DmaImporter> = m.nic(NIC_PINNED.parse()?, pinned_caps)?;
    let gpu2 = m.gpu(
        "0000:13:00.0".parse()?,
        LEN,
        1024,
        MemoryKind::DEVICE_PRIVATE,
    )?;
    let exporter2: Arc<dyn MemoryExporter> = gpu2;
    match m.negotiator().map(
        &exporter2,
        &pinned,
        AddrRange::new(Offset(0), LEN)?,
        Access::READ,
        &policy,
    ) {
        Err(e @ Error::Refused { .. }) => say(&format!(
            "6. NIC {NIC_PINNED} without ODP asks for movable GPU memory: {e}"
        )),
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(fail(
                "refusal",
                "a non-ODP NIC was given movable memory".into(),
            ))
        }
    }

    drop(mapping);
    let log = m.platform().log().render();
    let events = m.platform().log().len();
    let findings = m.finish();
    say(&format!(
        "7. mapping dropped; {events} events logged, {} sanitizer findings",
        findings.len()
    ));
    Ok(StoryReport {
        events,
        log,
        findings: findings.len(),
    })
}
