//! The decision itself: a pure function of the facts and the policy, so it can be cached,
//! explained (`p2pctl explain`) and tested rule by rule.

use super::{Fallback, Plan, Policy, Reason, Strategy};
use crate::access::Access;
use crate::error::Result;
use crate::pci::PciAddr;
use crate::topology::{Route, Topology};
use crate::traits::{DomainKind, ExporterId, ExporterInfo, ImporterCaps, ImporterFlags, Residency};

/// Everything a decision depends on (besides the topology and the policy).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    /// The exporter.
    pub exporter: ExporterId,
    /// What it says of itself.
    pub info: ExporterInfo,
    /// The importer's address.
    pub importer: PciAddr,
    /// The importer's capabilities.
    pub caps: ImporterCaps,
    /// The importer's IOMMU domain kind.
    pub domain: DomainKind,
    /// The access wanted.
    pub access: Access,
}

/// Applies the rules in order and returns the plan. Errors only when a device is not in the
/// topology; a refusal is a plan whose strategy is [`Strategy::Refused`].
///
/// The rules, in order:
/// 1. a blocked domain refuses; atomics need an importer that issues them;
/// 2. without ODP the memory must be pinned, and memory that cannot be pinned is refused;
/// 3. memory in host RAM: mapped into a translated domain, or used by bus address under an
///    identity domain if the DMA mask reaches it;
/// 4. device memory: the importer must take peer memory, the path must be within the policy's
///    class, the kernel must route it; a switch route is `Direct` (if the mask reaches), a
///    host-bridge route (if allowed) is `ViaIommu` or `Identity` by the domain kind;
/// 5. a rule of 3–4 that fails falls back to a bounce buffer or refuses, as the policy says;
///    a policy that requires IOMMU isolation makes a switch route fail like such a rule, and
///    refuses a passthrough domain outright after rule 2 (nothing it offers is isolated).
pub fn decide(topology: &Topology, f: &Facts, policy: &Policy) -> Result<Plan> {
    let path = match f.info.residency {
        Residency::Device(dev) => Some(topology.path(dev, f.importer)?),
        Residency::Host { .. } => {
            topology.endpoint(f.importer)?;
            None
        }
    };
    let mut reasons = Vec::new();
    let plan = |strategy, reasons, pin| Plan {
        exporter: f.exporter,
        importer: f.importer,
        access: f.access,
        strategy,
        reasons,
        pin,
        domain: f.domain,
        residency: f.info.residency,
        path: path.clone(),
    };
    let refuse = |mut reasons: Vec<Reason>, why: Reason| {
        reasons.push(why.clone());
        Ok(plan(Strategy::Refused(why), reasons, false))
    };

    // Rule 1.
    if f.domain == DomainKind::Blocked {
        return refuse(reasons, Reason::DomainBlocked);
    }
    if f.access.contains(Access::ATOMIC) && !f.caps.flags.contains(ImporterFlags::ATOMICS) {
        return refuse(reasons, Reason::AtomicsUnsupported);
    }
    // Rule 2.
    let pin = if f.caps.flags.contains(ImporterFlags::ODP) {
        if f.info.movable {
            reasons.push(Reason::RevocableForOdp);
        }
        false
    } else if !f.info.pinnable {
        return refuse(reasons, Reason::MovableNeedsOdp);
    } else {
        reasons.push(Reason::PinnedForNonOdp);
        true
    };
    let top = f.info.bus_window.last().map_or(0, |a| a.0);
    let mask_ok = top <= f.caps.dma_mask;
    let mask_reason = Reason::MaskTooSmall {
        top,
        mask: f.caps.dma_mask,
    };
    // Rule 5, used by 3 and 4.
    let fallback = |mut reasons: Vec<Reason>, why: Reason| match policy.fallback {
        Fallback::Bounce => {
            reasons.push(why);
            reasons.push(Reason::BounceFallback);
            Ok(plan(Strategy::Bounce, reasons, pin))
        }
        Fallback::Refuse => {
            reasons.push(why.clone());
            reasons.push(Reason::PolicyRefuses);
            Ok(plan(Strategy::Refused(why), reasons, false))
        }
    };
    if let Some(why) = passthrough_forbidden(f, policy) {
        reasons.push(Reason::IdentityDomain);
        return refuse(reasons, why);
    }
    let by_domain = |mut reasons: Vec<Reason>| {
        if f.domain == DomainKind::Translated {
            reasons.push(Reason::TranslatedDomain);
            return Ok(plan(Strategy::ViaIommu, reasons, pin));
        }
        reasons.push(Reason::IdentityDomain);
        if !mask_ok {
            return fallback(reasons, mask_reason.clone());
        }
        Ok(plan(Strategy::Identity, reasons, pin))
    };

    // Rule 3.
    let Some(p) = path.clone() else {
        reasons.push(Reason::HostMemory);
        return by_domain(reasons);
    };
    // Rule 4.
    if !f.caps.flags.contains(ImporterFlags::P2P) {
        return fallback(reasons, Reason::ImporterNotP2p);
    }
    if p.class > policy.max_path {
        return fallback(
            reasons,
            Reason::PathTooLong {
                class: p.class,
                max: policy.max_path,
            },
        );
    }
    if !p.acs_redirect.is_empty() {
        reasons.push(Reason::AcsRedirect(p.acs_redirect.clone()));
    }
    match p.route {
        Route::Unsupported(why) => fallback(reasons, Reason::RouteUnsupported(why)),
        Route::BusAddr => {
            reasons.push(Reason::SwitchRoutes {
                distance: p.distance,
            });
            if !mask_ok {
                return fallback(reasons, mask_reason);
            }
            if policy.require_iommu_isolation {
                let bypass = "bus addresses routed by a switch";
                return fallback(reasons, Reason::IsolationRequired { bypass });
            }
            if f.domain == DomainKind::Translated {
                reasons.push(Reason::NoIommuIsolation);
            }
            Ok(plan(Strategy::Direct, reasons, pin))
        }
        Route::ThroughHostBridge => {
            if !policy.allow_host_bridge {
                return fallback(reasons, Reason::HostBridgeDisallowed);
            }
            reasons.push(Reason::ThroughHostBridge);
            by_domain(reasons)
        }
    }
}

/// With a passthrough domain no plan isolates (a bounce buffer is reached by bus address too),
/// so a policy that requires isolation refuses outright rather than fall back.
fn passthrough_forbidden(f: &Facts, policy: &Policy) -> Option<Reason> {
    (policy.require_iommu_isolation && f.domain == DomainKind::Identity).then_some(
        Reason::IsolationRequired {
            bypass: "addresses in a passthrough domain",
        },
    )
}

#[cfg(test)]
mod tests;
