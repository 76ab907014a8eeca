//! The ACS advisor: for a pair whose route is not `bus-addr` because ports on the way redirect
//! peer requests upstream, which ACS control bits on which ports would have to change for the
//! switch to turn the requests around, and what that costs in isolation (the IOMMU groups that
//! would merge, by the rules in [`groups`](super::groups)). For a pair that shares no switch,
//! it says that no ACS change helps, and why. Advice only: it is computed on a copy of the
//! model ([`Topology::with_acs`]) and changes no device.

use super::{AcsFlags, PathClass, Route, Topology};
use crate::error::Result;
use crate::pci::PciAddr;
use std::collections::BTreeSet;
use std::fmt;

/// One port's change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AcsChange {
    /// The port.
    pub port: PciAddr,
    /// The bits to turn off (its redirect bits: RR, CR, EC).
    pub clear: Vec<&'static str>,
    /// The bits it keeps on.
    pub keep: Vec<&'static str>,
}

/// What changing ACS would do for one pair (provider's memory, client's DMA).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "kebab-case"))]
pub enum AcsAdvice {
    /// The switch already turns the requests around: nothing to change.
    AlreadyBusAddr,
    /// Clearing redirect bits on these ports gives `route_after`.
    ClearRedirect {
        /// The ports and bits, provider side first.
        changes: Vec<AcsChange>,
        /// The route once they are cleared (`bus-addr`).
        route_after: &'static str,
        /// IOMMU groups that would form from several of today's, each as its members.
        merged_groups: Vec<Vec<PciAddr>>,
        /// Whether the two devices share an IOMMU group already (a port above them lacks ACS),
        /// so they are not isolated from each other today either.
        share_a_group_now: bool,
    },
    /// The devices share no switch below the host bridge: requests reach the host bridge
    /// whatever ACS says.
    NoSharedSwitch {
        /// Today's route (`host-bridge` or `unsupported`).
        route: &'static str,
        /// Why no ACS change helps.
        reason: String,
    },
}

impl Topology {
    /// ACS advice for DMA by `client` to memory of `provider`.
    pub fn acs_advice(&self, provider: PciAddr, client: PciAddr) -> Result<AcsAdvice> {
        let path = self.path(provider, client)?;
        if path.route == Route::BusAddr {
            return Ok(AcsAdvice::AlreadyBusAddr);
        }
        if path.acs_redirect.is_empty() {
            return Ok(no_shared_switch(path.class, &path.route));
        }
        let mut changes = Vec::new();
        let mut after = Vec::new();
        for &port in &path.acs_redirect {
            let acs = self.node(self.lookup(port)?).acs;
            let keep = acs.difference(AcsFlags::REDIRECT);
            changes.push(AcsChange {
                port,
                clear: acs.intersection(AcsFlags::REDIRECT).names(),
                keep: keep.names(),
            });
            after.push((port, keep));
        }
        let open = self.with_acs(&after)?;
        let route_after = open.path(provider, client)?.route.name();
        let now = self.iommu_groups();
        let share_a_group_now = now
            .iter()
            .any(|g| g.contains(&provider) && g.contains(&client));
        Ok(AcsAdvice::ClearRedirect {
            changes,
            route_after,
            merged_groups: merged(&now, &open.iommu_groups()),
            share_a_group_now,
        })
    }
}

fn no_shared_switch(class: PathClass, route: &Route) -> AcsAdvice {
    let reason = match route {
        Route::Unsupported(why) => format!(
            "the devices share no switch ({class}): requests must reach the host bridge, which \
             does not forward them ({why}); no ACS change helps"
        ),
        _ => format!(
            "the devices share no switch ({class}): requests go up to the host bridge whatever \
             ACS says, through the importer's IOMMU; no ACS change makes them bus-addr"
        ),
    };
    AcsAdvice::NoSharedSwitch {
        route: route.name(),
        reason,
    }
}

/// The groups of `after` that hold members of more than one group of `before`.
fn merged(before: &[Vec<PciAddr>], after: &[Vec<PciAddr>]) -> Vec<Vec<PciAddr>> {
    let group_of = |a: &PciAddr| before.iter().position(|g| g.contains(a));
    after
        .iter()
        .filter(|g| g.iter().filter_map(group_of).collect::<BTreeSet<_>>().len() > 1)
        .cloned()
        .collect()
}

impl fmt::Display for AcsAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ACS advice (computed on the model; no device is changed):"
        )?;
        match self {
            AcsAdvice::AlreadyBusAddr => writeln!(
                f,
                "  the switch already turns the requests around (bus-addr): nothing to change"
            ),
            AcsAdvice::NoSharedSwitch { reason, .. } => writeln!(f, "  {reason}"),
            AcsAdvice::ClearRedirect {
                changes,
                route_after,
                merged_groups,
                share_a_group_now,
            } => {
                writeln!(f, "  for the switch to turn the requests around, clear:")?;
                for c in changes {
                    let keep = if c.keep.is_empty() {
                        "nothing".to_owned()
                    } else {
                        c.keep.join(" ")
                    };
                    writeln!(f, "    {}: {} (keeping {keep})", c.port, c.clear.join(" "))?;
                }
                writeln!(
                    f,
                    "  then the route is {route_after}: peer requests between these devices no \
                     longer pass the root complex, so the IOMMU no longer checks them"
                )?;
                if merged_groups.is_empty() {
                    let already = if *share_a_group_now {
                        ": the two already share one (a port above them has no ACS isolation)"
                    } else {
                        ""
                    };
                    writeln!(f, "  no IOMMU group would merge{already}")
                } else {
                    writeln!(f, "  IOMMU groups that would merge (Linux's pci_device_group rules; multifunction and quirks not modelled):")?;
                    for g in merged_groups {
                        let names: Vec<String> = g.iter().map(PciAddr::to_string).collect();
                        writeln!(f, "    {}", names.join(" "))?;
                    }
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::presets;
    use super::*;

    use crate::topology::test_util::a;

    #[test]
    fn redirecting_ports_are_named_with_the_bits_and_the_merged_groups() {
        // Two GPUs below an ACS switch whose root port isolates too: each in its own group.
        let t = presets::acs_switch()
            .unwrap()
            .with_acs(&[(a("00:01.0"), AcsFlags::LINUX_ISOLATION)])
            .unwrap();
        let (gpu, nic) = (a("03:00.0"), a("05:00.0"));
        let advice = t.acs_advice(gpu, nic).unwrap();
        let AcsAdvice::ClearRedirect {
            changes,
            route_after,
            merged_groups,
            share_a_group_now,
        } = &advice
        else {
            panic!("{advice:?}");
        };
        let ports: Vec<PciAddr> = changes.iter().map(|c| c.port).collect();
        assert_eq!(ports, t.path(gpu, nic).unwrap().acs_redirect);
        assert!(changes
            .iter()
            .all(|c| c.clear == ["RR", "CR"] && c.keep == ["SV", "UF"]));
        assert_eq!(*route_after, "bus-addr");
        // Each device joins its downstream port's group; neither pair member shares one.
        for g in merged_groups {
            assert_eq!(g.len(), 2, "{merged_groups:?}");
        }
        assert_eq!(merged_groups.len(), changes.len());
        assert!(!share_a_group_now);
        // The preset as it is: its root port has no ACS, so all below share one group already.
        let as_is = presets::acs_switch().unwrap().acs_advice(gpu, nic).unwrap();
        assert!(
            as_is.to_string().contains("the two already share one"),
            "{as_is}"
        );
        let text = advice.to_string();
        assert!(
            text.contains("RR CR (keeping SV UF)") && text.contains("bus-addr"),
            "{text}"
        );
        // What p2pctl explain --json prints.
        #[cfg(feature = "serde")]
        {
            let json = serde_json::to_value(&advice).unwrap();
            assert_eq!(json["kind"], "clear-redirect");
            assert_eq!(json["changes"][0]["clear"][0], "RR");
        }
    }

    #[test]
    fn pairs_without_a_shared_switch_get_no_acs_change() {
        let t = presets::workstation().unwrap();
        // Below a host bridge that forwards no P2P: nothing helps.
        let advice = t.acs_advice(a("03:00.0"), a("10:00.0")).unwrap();
        let AcsAdvice::NoSharedSwitch { route, reason } = &advice else {
            panic!("{advice:?}");
        };
        assert_eq!(*route, "unsupported");
        assert!(reason.contains("no ACS change helps"), "{reason}");
        assert_eq!(
            t.acs_advice(a("03:00.0"), a("04:00.0")).unwrap(),
            AcsAdvice::AlreadyBusAddr
        );
    }
}
