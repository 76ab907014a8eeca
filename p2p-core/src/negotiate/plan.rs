//! Plans: the strategy the negotiator chose and every reason that led there.

use crate::access::Access;
use crate::pci::PciAddr;
use crate::topology::{PathClass, PathInfo, Unsupported};
use crate::traits::{DomainKind, ExporterId, Residency};
use std::fmt;

/// How the importer will reach the memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Program bus addresses; the switch routes the TLPs and the IOMMU is not on the path (no
    /// IOMMU isolation for these requests).
    Direct,
    /// Map the memory's CPU physical pages into the importer's IOMMU domain; program IOVAs.
    ViaIommu,
    /// The importer's domain is passthrough; program bus addresses, routed through the host
    /// bridge (or to RAM).
    Identity,
    /// Stage through pinned host memory; the caller copies between it and the exporter.
    Bounce,
    /// No acceptable way: the first rule that failed.
    Refused(Reason),
}

impl Strategy {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::ViaIommu => "via-iommu",
            Strategy::Identity => "identity",
            Strategy::Bounce => "bounce",
            Strategy::Refused(_) => "refused",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Refused(r) => write!(f, "refused: {r}"),
            s => f.write_str(s.name()),
        }
    }
}

/// One step of the negotiator's reasoning. Each rule of [`decide`](super::decide) adds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The importer's IOMMU domain blocks all DMA.
    DomainBlocked,
    /// Atomics were asked of an importer that cannot issue them.
    AtomicsUnsupported,
    /// The memory cannot be pinned (it may move) and the importer cannot take page faults: the
    /// case the 2016 Linux thread settled by requiring ODP.
    MovableNeedsOdp,
    /// The importer lacks ODP, so the grant pins the memory.
    PinnedForNonOdp,
    /// The importer has ODP: the grant stays revocable and the mapping is invalidated when the
    /// memory moves.
    RevocableForOdp,
    /// The memory is in host RAM: no peer-to-peer route is involved.
    HostMemory,
    /// The importer cannot handle peer memory (dma-buf `allow_peer2peer` false).
    ImporterNotP2p,
    /// The path is longer than the policy allows.
    PathTooLong {
        /// The path's class.
        class: PathClass,
        /// The policy's limit.
        max: PathClass,
    },
    /// The kernel would not route this pair.
    RouteUnsupported(Unsupported),
    /// The path needs the host bridge and the policy forbids that.
    HostBridgeDisallowed,
    /// ACS on these ports redirects peer requests up to the host bridge.
    AcsRedirect(Vec<PciAddr>),
    /// The requests turn around in a switch (p2pdma distance given).
    SwitchRoutes {
        /// The p2pdma distance.
        distance: u32,
    },
    /// Direct bus addresses bypass the importer's translated domain: no IOMMU isolation.
    NoIommuIsolation,
    /// The host bridge forwards peer requests (allow-listed, or a CPU that routes P2P).
    ThroughHostBridge,
    /// The importer's domain is translated: the memory is mapped into it.
    TranslatedDomain,
    /// The importer's domain is passthrough: addresses go out untranslated.
    IdentityDomain,
    /// The memory's bus addresses reach above the importer's DMA mask.
    MaskTooSmall {
        /// The highest bus address of the exporter.
        top: u64,
        /// The importer's mask.
        mask: u64,
    },
    /// The policy allows a bounce buffer instead.
    BounceFallback,
    /// The policy refuses instead of bouncing.
    PolicyRefuses,
    /// The policy requires IOMMU isolation and this way of reaching the memory has none.
    IsolationRequired {
        /// What bypasses the IOMMU ("bus addresses", "a passthrough domain").
        bypass: &'static str,
    },
}

/// A plan's reasons as one line (`1. ...; 2. ...`), for log fields: a tracing event formats it
/// only when a subscriber records the event.
#[derive(Debug, Clone, Copy)]
pub struct ReasonList<'a>(pub &'a [Reason]);

impl fmt::Display for ReasonList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}. {r}", i + 1)?;
        }
        Ok(())
    }
}

/// What an importer can reach through a plan's mapping: the answer a multi-tenant host or a
/// VMM needs before it assigns the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// No IOMMU check: the device emits bus addresses (a `Direct` route, an identity domain)
    /// and can reach anything those reach, such as the peer's whole BAR, not only the range
    /// mapped.
    None,
    /// The importer's IOMMU translates every request: only the mapped pages (whole 4 KiB pages
    /// around the range) are reachable, and only while the mapping lives.
    PageGranular,
    /// A refused plan maps nothing.
    NotMapped,
}

impl Isolation {
    /// Short name, as `explain --json` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::PageGranular => "page-granular",
            Isolation::NotMapped => "not-mapped",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::None => "none: the device emits bus addresses the IOMMU does not check, so it can reach more than the mapped range",
            Isolation::PageGranular => "page-granular: the importer's IOMMU admits only the mapped pages",
            Isolation::NotMapped => "none needed: nothing is mapped",
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DomainBlocked => f.write_str("the importer's IOMMU domain blocks all DMA"),
            Reason::AtomicsUnsupported => f.write_str("atomics requested but the importer cannot issue PCIe AtomicOps"),
            Reason::MovableNeedsOdp => f.write_str(
                "the memory cannot be pinned (it may move) and the importer has no ODP (page-fault) support",
            ),
            Reason::PinnedForNonOdp => f.write_str("the importer has no ODP, so the memory is pinned while mapped"),
            Reason::RevocableForOdp => {
                f.write_str("the importer has ODP: the mapping is invalidated and re-faulted if the memory moves")
            }
            Reason::HostMemory => f.write_str("the memory is in host RAM: no peer-to-peer route"),
            Reason::ImporterNotP2p => f.write_str("the importer cannot take peer memory (allow_peer2peer is off)"),
            Reason::PathTooLong { class, max } => write!(f, "path {class} is longer than the policy's limit {max}"),
            Reason::RouteUnsupported(why) => write!(f, "the kernel would not route it: {why}"),
            Reason::HostBridgeDisallowed => f.write_str("the path needs the host bridge and the policy forbids that"),
            Reason::AcsRedirect(ports) => {
                let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "ACS redirect on {} sends peer requests to the host bridge (pci=disable_acs_redir={} would avoid it)",
                    list.join(", "),
                    list.join(";")
                )
            }
            Reason::SwitchRoutes { distance } => {
                write!(f, "the requests turn around in a PCIe switch (p2pdma distance {distance})")
            }
            Reason::NoIommuIsolation => {
                f.write_str("bus addresses bypass the importer's IOMMU domain: no IOMMU isolation for this traffic")
            }
            Reason::ThroughHostBridge => f.write_str("the host bridge forwards peer requests"),
            Reason::TranslatedDomain => f.write_str("the importer's domain is translated: memory is mapped to IOVAs"),
            Reason::IdentityDomain => f.write_str("the importer's domain is passthrough: bus addresses go out as they are"),
            Reason::MaskTooSmall { top, mask } => {
                write!(f, "bus address {top:#x} is above the importer's DMA mask {mask:#x}")
            }
            Reason::BounceFallback => f.write_str("falling back to a bounce buffer in host RAM"),
            Reason::PolicyRefuses => f.write_str("the policy refuses rather than bounce"),
            Reason::IsolationRequired { bypass } => {
                write!(f, "the policy requires IOMMU isolation, and {bypass} bypass the IOMMU")
            }
        }
    }
}

/// The negotiator's answer for one (exporter, importer, access, policy).
///
/// Aligned to 128 bytes: every mapping holds its plan's `Arc`, so the count in front of a plan
/// is written on every map and drop by the threads mapping that pair, and must not share a line
/// with another plan, which other threads' mappings write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(align(128))]
pub struct Plan {
    /// The exporter it was made for.
    pub exporter: ExporterId,
    /// The importer it was made for.
    pub importer: PciAddr,
    /// The access it was made for.
    pub access: Access,
    /// What to do.
    pub strategy: Strategy,
    /// Every rule that applied, in order.
    pub reasons: Vec<Reason>,
    /// Whether grants under this plan pin the memory.
    pub pin: bool,
    /// The importer's domain kind when the plan was made.
    pub domain: DomainKind,
    /// Where the exporter's memory was when the plan was made. A plan is only valid for memory
    /// that is still there: [`Negotiator::establish`](super::Negotiator::establish) refuses a
    /// plan whose memory has moved since with [`Error::StalePlan`](crate::Error::StalePlan).
    pub residency: Residency,
    /// The peer-to-peer path, when the memory is in a device.
    pub path: Option<PathInfo>,
}

impl Plan {
    /// Whether the plan can be established.
    pub fn is_refused(&self) -> bool {
        matches!(self.strategy, Strategy::Refused(_))
    }

    /// The isolation a mapping under this plan gives: none for `Direct` and `Identity` (and a
    /// bounce buffer under a passthrough domain), page-granular when the importer's IOMMU
    /// translates (`ViaIommu`, a bounce buffer in a translated domain).
    pub fn isolation(&self) -> Isolation {
        match (&self.strategy, self.domain) {
            (Strategy::Refused(_), _) => Isolation::NotMapped,
            (Strategy::ViaIommu, _) | (Strategy::Bounce, DomainKind::Translated) => {
                Isolation::PageGranular
            }
            _ => Isolation::None,
        }
    }

    /// What becomes of the memory while a mapping under this plan lives, in words: `pinned`
    /// (it cannot move; only a forced revoke takes it away), `revocable` (an invalidation tears
    /// the mapping down when the memory moves), or `not mapped` for a refused plan, which
    /// grants nothing. Agrees with [`pin`](Self::pin) and the reasons, which is what `p2pctl
    /// explain` prints.
    pub fn memory_state(&self) -> &'static str {
        match (self.is_refused(), self.pin) {
            (true, _) => "not mapped (refused)",
            (false, true) => "pinned",
            (false, false) => "revocable",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan: {}", self.strategy)?;
        if let Some(p) = &self.path {
            writeln!(
                f,
                "path: {} route {} distance {}",
                p.class, p.route, p.distance
            )?;
        }
        writeln!(f, "importer domain: {}", self.domain)?;
        writeln!(f, "memory: {}", self.memory_state())?;
        writeln!(f, "isolation: {}", self.isolation())?;
        writeln!(f, "because:")?;
        for (i, r) in self.reasons.iter().enumerate() {
            writeln!(f, "  {}. {r}", i + 1)?;
        }
        Ok(())
    }
}
