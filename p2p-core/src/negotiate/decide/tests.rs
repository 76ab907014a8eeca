//! One test per rule of `decide`.

use super::*;
use crate::addr::{dma_mask, AddrRange, BusAddr};
use crate::negotiate::Isolation;
use crate::topology::{presets, PathClass, Unsupported};

const GPU: &str = "0000:03:00.0";
const NIC: &str = "0000:05:00.0";
const FAR_NVME: &str = "0000:10:00.0";
const OTHER_BRIDGE_NIC: &str = "0000:81:00.0";

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

struct Case {
    facts: Facts,
    policy: Policy,
}

/// GPU memory (movable, pinnable, 32 GiB at 0x60_0000_0000) to an ODP + P2P NIC with a 64-bit
/// mask in a translated domain.
fn case() -> Case {
    Case {
        facts: Facts {
            exporter: ExporterId(7),
            info: ExporterInfo {
                residency: Residency::Device(a(GPU)),
                size: 1 << 30,
                movable: true,
                pinnable: true,
                bus_window: AddrRange::new(BusAddr(0x60_0000_0000), 32 << 30).unwrap(),
            },
            importer: a(NIC),
            caps: ImporterCaps {
                flags: ImporterFlags::ODP | ImporterFlags::P2P,
                dma_mask: dma_mask(64),
                max_segment: 1 << 16,
            },
            domain: DomainKind::Translated,
            access: Access::READ | Access::WRITE,
        },
        policy: Policy::default(),
    }
}

impl Case {
    fn run(&self, topo: &Topology) -> Plan {
        decide(topo, &self.facts, &self.policy).unwrap()
    }
}

fn ws() -> Topology {
    presets::workstation().unwrap()
}

fn acs() -> Topology {
    presets::acs_switch().unwrap()
}

#[test]
fn blocked_domain_refuses() {
    let mut c = case();
    c.facts.domain = DomainKind::Blocked;
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Refused(Reason::DomainBlocked));
    assert_eq!(p.reasons, vec![Reason::DomainBlocked]);
}

#[test]
fn atomics_need_an_atomic_importer() {
    let mut c = case();
    c.facts.access |= Access::ATOMIC;
    assert_eq!(
        c.run(&ws()).strategy,
        Strategy::Refused(Reason::AtomicsUnsupported)
    );
    c.facts.caps.flags |= ImporterFlags::ATOMICS;
    assert_eq!(c.run(&ws()).strategy, Strategy::Direct);
}

#[test]
fn unpinnable_memory_needs_odp() {
    let mut c = case();
    c.facts.caps.flags.remove(ImporterFlags::ODP);
    c.facts.info.pinnable = false;
    // Even a bounce policy does not help: the copy source could move under the copy.
    c.policy.fallback = Fallback::Bounce;
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Refused(Reason::MovableNeedsOdp));
}

#[test]
fn non_odp_importer_pins() {
    let mut c = case();
    c.facts.caps.flags.remove(ImporterFlags::ODP);
    let p = c.run(&ws());
    assert!(p.pin);
    assert_eq!(p.reasons[0], Reason::PinnedForNonOdp);
    assert_eq!(p.strategy, Strategy::Direct);
}

#[test]
fn odp_importer_stays_revocable() {
    let p = case().run(&ws());
    assert!(!p.pin);
    assert_eq!(p.reasons[0], Reason::RevocableForOdp);
    let mut c = case();
    c.facts.info.movable = false;
    let p = c.run(&ws());
    assert!(!p.pin && !p.reasons.contains(&Reason::RevocableForOdp));
}

#[test]
fn host_memory_maps_by_domain_kind() {
    let mut c = case();
    c.facts.info.residency = Residency::Host { numa: 0 };
    c.facts.info.bus_window = AddrRange::new(BusAddr(0), 64 << 30).unwrap();
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::ViaIommu);
    assert!(p.path.is_none());
    assert_eq!(
        p.reasons[1..],
        [Reason::HostMemory, Reason::TranslatedDomain]
    );
    c.facts.domain = DomainKind::Identity;
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Identity);
    assert_eq!(p.reasons.last(), Some(&Reason::IdentityDomain));
}

#[test]
fn importer_without_p2p_falls_back() {
    let mut c = case();
    c.facts.caps.flags.remove(ImporterFlags::P2P);
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Refused(Reason::ImporterNotP2p));
    assert_eq!(p.reasons.last(), Some(&Reason::PolicyRefuses));
    c.policy.fallback = Fallback::Bounce;
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Bounce);
    assert_eq!(
        p.reasons[1..],
        [Reason::ImporterNotP2p, Reason::BounceFallback]
    );
}

#[test]
fn path_longer_than_policy_falls_back() {
    let mut c = case();
    c.policy.max_path = PathClass::Loc;
    let p = c.run(&ws());
    assert_eq!(
        p.strategy,
        Strategy::Refused(Reason::PathTooLong {
            class: PathClass::Pix,
            max: PathClass::Loc
        })
    );
    c.policy.max_path = PathClass::Pix;
    assert_eq!(c.run(&ws()).strategy, Strategy::Direct);
}

#[test]
fn unsupported_route_falls_back() {
    let mut c = case();
    c.facts.importer = a(FAR_NVME);
    let p = c.run(&ws());
    assert_eq!(
        p.strategy,
        Strategy::Refused(Reason::RouteUnsupported(
            Unsupported::HostBridgeNotAllowed {
                bridge: "pci0000:00".into()
            }
        ))
    );
    c.facts.importer = a(OTHER_BRIDGE_NIC);
    let p = c.run(&acs());
    assert!(matches!(
        p.strategy,
        Strategy::Refused(Reason::RouteUnsupported(
            Unsupported::CrossHostBridge { .. }
        ))
    ));
}

#[test]
fn host_bridge_route_can_be_forbidden() {
    let mut c = case();
    c.policy.allow_host_bridge = false;
    assert_eq!(
        c.run(&acs()).strategy,
        Strategy::Refused(Reason::HostBridgeDisallowed)
    );
}

#[test]
fn acs_redirect_is_explained_and_goes_through_the_iommu() {
    let p = case().run(&acs());
    assert_eq!(p.strategy, Strategy::ViaIommu);
    assert!(matches!(&p.reasons[1], Reason::AcsRedirect(ports) if ports.len() == 2));
    assert_eq!(
        p.reasons[2..],
        [Reason::ThroughHostBridge, Reason::TranslatedDomain]
    );
    assert!(p.reasons[1].to_string().contains("pci=disable_acs_redir="));
}

#[test]
fn switch_route_is_direct_and_says_it_bypasses_the_iommu() {
    let p = case().run(&ws());
    assert_eq!(p.strategy, Strategy::Direct);
    assert_eq!(
        p.reasons[1..],
        [
            Reason::SwitchRoutes { distance: 4 },
            Reason::NoIommuIsolation
        ]
    );
    let mut c = case();
    c.facts.domain = DomainKind::Identity;
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Direct);
    assert!(!p.reasons.contains(&Reason::NoIommuIsolation));
}

#[test]
fn identity_domain_through_the_host_bridge() {
    let mut c = case();
    c.facts.domain = DomainKind::Identity;
    let p = c.run(&acs());
    assert_eq!(p.strategy, Strategy::Identity);
    assert_eq!(p.reasons.last(), Some(&Reason::IdentityDomain));
}

#[test]
fn dma_mask_below_the_bar_falls_back() {
    let mut c = case();
    c.facts.caps.dma_mask = dma_mask(32);
    let top = 0x60_0000_0000 + (32u64 << 30) - 1;
    let why = Reason::MaskTooSmall {
        top,
        mask: dma_mask(32),
    };
    assert_eq!(c.run(&ws()).strategy, Strategy::Refused(why.clone()));
    c.facts.domain = DomainKind::Identity;
    assert_eq!(c.run(&acs()).strategy, Strategy::Refused(why));
    // A translated domain hands out IOVAs below the mask instead.
    c.facts.domain = DomainKind::Translated;
    assert_eq!(c.run(&acs()).strategy, Strategy::ViaIommu);
    c.policy.fallback = Fallback::Bounce;
    c.facts.domain = DomainKind::Identity;
    assert_eq!(c.run(&acs()).strategy, Strategy::Bounce);
}

#[test]
fn unknown_devices_are_errors_not_refusals() {
    let mut c = case();
    c.facts.importer = a("0000:77:00.0");
    assert!(decide(&ws(), &c.facts, &c.policy).is_err());
    c.facts.info.residency = Residency::Host { numa: 0 };
    assert!(decide(&ws(), &c.facts, &c.policy).is_err());
}

#[test]
fn same_device_is_direct() {
    let mut c = case();
    c.facts.importer = a(GPU);
    let p = c.run(&ws());
    assert_eq!(p.strategy, Strategy::Direct);
    assert_eq!(p.path.unwrap().class, PathClass::Loc);
}

/// The printed memory state agrees with the plan: a non-ODP importer whose mask does not reach
/// the BAR is refused (not "revocable", whatever its reasons say), bounces pinned, and an ODP
/// importer's plan is revocable.
#[test]
fn printed_memory_state_agrees_with_the_plan() {
    let mut c = case();
    c.facts.caps.flags.remove(ImporterFlags::ODP);
    c.facts.caps.dma_mask = dma_mask(32);
    let refused = c.run(&ws());
    assert!(refused.is_refused());
    assert_eq!(refused.reasons[0], Reason::PinnedForNonOdp);
    let text = refused.to_string();
    assert!(text.contains("memory: not mapped (refused)"), "{text}");
    assert!(!text.contains("revocable"), "{text}");
    c.policy.fallback = Fallback::Bounce;
    let bounced = c.run(&ws());
    assert_eq!(bounced.strategy, Strategy::Bounce);
    assert!(
        bounced.to_string().contains("memory: pinned\n"),
        "{bounced}"
    );
    assert!(case()
        .run(&ws())
        .to_string()
        .contains("memory: revocable\n"));
}

/// A policy that requires IOMMU isolation refuses bus addresses (or bounces through the IOMMU,
/// as its fallback says) and refuses a passthrough domain whatever the fallback; every plan
/// says what isolation it gives.
#[test]
fn required_isolation_refuses_direct_and_identity() {
    let c = case();
    let direct = c.run(&ws());
    assert_eq!(
        (direct.strategy.clone(), direct.isolation()),
        (Strategy::Direct, Isolation::None)
    );
    let mut c = case();
    c.policy.require_iommu_isolation = true;
    let why = Reason::IsolationRequired {
        bypass: "bus addresses routed by a switch",
    };
    let refused = c.run(&ws());
    assert_eq!(refused.strategy, Strategy::Refused(why.clone()));
    assert_eq!(refused.isolation(), Isolation::NotMapped);
    c.policy.fallback = Fallback::Bounce;
    let bounced = c.run(&ws());
    assert_eq!(bounced.strategy, Strategy::Bounce);
    assert!(bounced.reasons.contains(&why));
    assert_eq!(bounced.isolation(), Isolation::PageGranular);
    assert!(bounced.to_string().contains("isolation: page-granular"));
    // A host-bridge route through the translated domain is isolated already: unchanged.
    let via = c.run(&acs());
    assert_eq!(
        (via.strategy.clone(), via.isolation()),
        (Strategy::ViaIommu, Isolation::PageGranular)
    );
    // A passthrough domain isolates nothing, bounce or not.
    c.facts.domain = DomainKind::Identity;
    let p = c.run(&acs());
    assert!(
        matches!(
            p.strategy,
            Strategy::Refused(Reason::IsolationRequired { .. })
        ),
        "{p}"
    );
    c.policy.require_iommu_isolation = false;
    assert_eq!(c.run(&acs()).isolation(), Isolation::None);
}
