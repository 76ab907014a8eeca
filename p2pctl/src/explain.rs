//! `p2pctl explain`: the negotiator's plan for one pair, with its reasons.

use crate::Input;
use clap::{Args, ValueEnum};
use p2p_core::addr::{dma_mask, AddrRange, BusAddr};
use p2p_core::negotiate::{decide, Facts, Fallback, Policy};
use p2p_core::prelude::*;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum Iommu {
    Translated,
    Identity,
    Blocked,
}

#[derive(Clone, Copy, ValueEnum)]
enum FallbackArg {
    Bounce,
    Refuse,
}

#[derive(Clone, Copy, ValueEnum)]
enum Memory {
    /// In the exporter's BAR.
    Device,
    /// Already migrated to host RAM.
    Host,
}

/// Arguments of `p2pctl explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// The device whose memory is used (e.g. a GPU), in lspci form.
    exporter: PciAddr,
    /// The device that does the DMA (e.g. a NIC).
    importer: PciAddr,
    #[command(flatten)]
    input: Input,
    /// The importer's IOMMU domain.
    #[arg(long, value_enum, default_value = "translated")]
    iommu: Iommu,
    /// The importer takes page faults (RDMA ODP).
    #[arg(long)]
    odp: bool,
    /// The importer cannot take peer memory (dma-buf allow_peer2peer off).
    #[arg(long)]
    no_p2p: bool,
    /// The importer needs PCIe atomics, and has them.
    #[arg(long)]
    atomics: bool,
    /// The importer's DMA address width in bits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(12..=64))]
    dma_bits: u32,
    /// The memory may move (HMM / TTM managed).
    #[arg(long)]
    movable: bool,
    /// The memory cannot be pinned (device-private).
    #[arg(long)]
    unpinnable: bool,
    /// Where the memory is now.
    #[arg(long, value_enum, default_value = "device")]
    memory: Memory,
    /// Longest path class allowed (LOC, PIX, PXB, PHB, NODE, SYS).
    #[arg(long, default_value = "SYS", value_parser = parse_class)]
    max_path: PathClass,
    /// Forbid P2P through the host bridge.
    #[arg(long)]
    no_host_bridge: bool,
    /// What to do when P2P is not possible.
    #[arg(long, value_enum, default_value = "refuse")]
    fallback: FallbackArg,
    /// Refuse plans without IOMMU isolation (Direct, Identity), as a multi-tenant host or a
    /// VMM would.
    #[arg(long)]
    require_isolation: bool,
    /// Print the plan and the ACS advice as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_class(s: &str) -> Result<PathClass, String> {
    PathClass::parse(s).ok_or_else(|| format!("{s:?} is not one of LOC, PIX, PXB, PHB, NODE, SYS"))
}

/// Prints the plan; exit status 0 when a plan exists, 3 when it is refused.
pub fn run(a: &ExplainArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let topo = a.input.load()?;
    let policy = Policy {
        max_path: a.max_path,
        allow_host_bridge: !a.no_host_bridge,
        fallback: match a.fallback {
            FallbackArg::Bounce => Fallback::Bounce,
            FallbackArg::Refuse => Fallback::Refuse,
        },
        require_iommu_isolation: a.require_isolation,
    };
    let plan = decide(&topo, &facts(a, &topo)?, &policy)?;
    // Devices in one IOMMU group can reach each other without the IOMMU seeing it: whatever
    // the plan, a VMM that assigns one must take the group.
    let shared_group = topo
        .iommu_groups()
        .iter()
        .any(|g| g.contains(&a.exporter) && g.contains(&a.importer));
    // Advice is about peer-to-peer routes: memory already in host RAM has none.
    let advice = match a.memory {
        Memory::Device => Some(topo.acs_advice(a.exporter, a.importer)?),
        Memory::Host => None,
    };
    if a.json {
        let report = serde_json::json!({
            "exporter": a.exporter,
            "importer": a.importer,
            "strategy": plan.strategy.name(),
            "refused": plan.is_refused(),
            // Facts as values, so scripts need not parse the lines; null where a refused plan
            // has none.
            "pinned": (!plan.is_refused()).then_some(plan.pin),
            "memory": plan.memory_state(),
            "isolation": plan.isolation().name(),
            "shared_iommu_group": shared_group,
            "reasons": plan.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "plan": plan.to_string().lines().collect::<Vec<_>>(),
            "acs_advice": advice,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} ({}) memory -> DMA by {} ({})",
            topo.display_name(a.exporter),
            a.exporter,
            topo.display_name(a.importer),
            a.importer
        );
        out!("{plan}");
        if shared_group {
            outln!(
                "iommu group: shared by both devices (no ACS isolation between them): a VMM that assigns one must assign the group"
            );
        } else {
            outln!("iommu group: separate");
        }
        if let Some(advice) = advice {
            out!("\n{advice}");
        }
    }
    Ok(if plan.is_refused() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// What the negotiator is told: the exporter's largest BAR (or host RAM), the importer as the
/// options describe it.
fn facts(a: &ExplainArgs, topo: &Topology) -> Result<Facts, Box<dyn std::error::Error>> {
    let exp = topo.endpoint(a.exporter)?;
    topo.endpoint(a.importer)?;
    let bar = exp
        .bars
        .iter()
        .max_by_key(|b| b.size)
        .ok_or_else(|| format!("exporter {} has no BAR to export", a.exporter))?;
    let residency = match a.memory {
        Memory::Device => Residency::Device(a.exporter),
        Memory::Host => Residency::Host {
            numa: topo.numa_of(a.exporter)?,
        },
    };
    let bus_window = match a.memory {
        Memory::Device => AddrRange::new(bar.bus, bar.size)?,
        // Host RAM as far as the CPU's physical address width reaches.
        Memory::Host => AddrRange::new(BusAddr(0), 1 << 46)?,
    };
    let mut flags = ImporterFlags::empty();
    flags.set(ImporterFlags::ODP, a.odp);
    flags.set(ImporterFlags::P2P, !a.no_p2p);
    flags.set(ImporterFlags::ATOMICS, a.atomics);
    let mut access = Access::READ | Access::WRITE;
    access.set(Access::ATOMIC, a.atomics);
    Ok(Facts {
        exporter: ExporterId(0),
        info: ExporterInfo {
            residency,
            size: bar.size,
            movable: a.movable,
            pinnable: !a.unpinnable,
            bus_window,
        },
        importer: a.importer,
        caps: ImporterCaps {
            flags,
            dma_mask: dma_mask(a.dma_bits),
            max_segment: 1 << 16,
        },
        domain: match a.iommu {
            Iommu::Translated => DomainKind::Translated,
            Iommu::Identity => DomainKind::Identity,
            Iommu::Blocked => DomainKind::Blocked,
        },
        access,
    })
}
