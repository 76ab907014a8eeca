//! What a caller allows the negotiator to choose.

use crate::topology::PathClass;

/// What to do when peer-to-peer is not possible or not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Stage through pinned host memory; the caller copies.
    Bounce,
    /// Fail with the reason.
    Refuse,
}

/// The caller's rules for a negotiation. Part of the plan-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// The longest peer-to-peer path allowed (as NCCL's `NCCL_NET_GDR_LEVEL`): `Pxb` keeps P2P
    /// below switches.
    pub max_path: PathClass,
    /// Whether P2P through a host bridge is allowed at all.
    pub allow_host_bridge: bool,
    /// What to do otherwise.
    pub fallback: Fallback,
    /// Refuse plans that give the importer no IOMMU isolation: `Direct` (bus addresses the
    /// switch routes, so the device can reach the peer's whole BAR, not just the mapped range)
    /// and `Identity` (a passthrough domain checks nothing). A `Direct` plan falls back as
    /// [`fallback`](Self::fallback) says (a bounce buffer mapped through the IOMMU is
    /// isolated); with a passthrough domain no plan isolates, so it is refused. For
    /// multi-tenant hosts and VMMs. Off by default: Linux allows both.
    pub require_iommu_isolation: bool,
}

impl Default for Policy {
    /// Whatever the kernel would allow; refuse otherwise.
    fn default() -> Self {
        Self {
            max_path: PathClass::Sys,
            allow_host_bridge: true,
            fallback: Fallback::Refuse,
            require_iommu_isolation: false,
        }
    }
}
