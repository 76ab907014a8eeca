//! IOMMU groups as Linux forms them for PCI devices (`pci_device_group()` in
//! `drivers/iommu/iommu.c`), computed on the model: which devices an IOMMU can tell apart.
//!
//! A device shares the group of the bridge above it unless the ACS path from that bridge up to
//! the root bus is enabled (`pci_acs_path_enabled(bus->self, NULL, REQ_ACS_FLAGS)`), where a
//! port is enabled when it has Source Validation, Request and Completion Redirect and Upstream
//! Forwarding on (`REQ_ACS_FLAGS`). As `pci_acs_enabled()` treats them: root ports and switch
//! downstream ports must have those bits on; switch upstream ports and endpoints pass (a
//! single-function device cannot redirect anything); a bridge known only as a bridge (PCI, or a
//! switch as NCCL names it) does not. Functions on a root bus each have their own group.
//!
//! Not modelled: multifunction devices without ACS sharing a group
//! (`get_pci_function_alias_group`), DMA aliases and quirks (`pci_for_each_dma_alias`,
//! `pci_dev_specific_acs_enabled`), and ACS capability bits the hardware lacks (the model has
//! the control register only, so every port is taken to implement all four).

use super::{AcsFlags, NodeId, NodeKind, Topology};
use crate::pci::PciAddr;
use std::collections::BTreeMap;

/// Linux's `REQ_ACS_FLAGS`: what a port must have on for the devices below it to be isolated.
pub const REQUIRED_FOR_ISOLATION: AcsFlags = AcsFlags::SV
    .union(AcsFlags::RR)
    .union(AcsFlags::CR)
    .union(AcsFlags::UF);

impl Topology {
    /// Whether a node isolates what is below it, as `pci_acs_enabled()` judges it.
    fn acs_enabled(&self, id: NodeId) -> bool {
        let n = self.node(id);
        match n.kind {
            NodeKind::RootPort | NodeKind::SwitchDownstream => {
                n.acs.contains(REQUIRED_FOR_ISOLATION)
            }
            NodeKind::SwitchUpstream | NodeKind::Endpoint(_) => true,
            NodeKind::Bridge | NodeKind::HostBridge(_) => false,
        }
    }

    /// `pci_acs_path_enabled(id, NULL, REQ_ACS_FLAGS)`: every node from `id` up to the root bus.
    fn acs_path_enabled(&self, id: NodeId) -> bool {
        let mut cur = Some(id);
        while let Some(n) = cur.filter(|&n| !matches!(self.node(n).kind, NodeKind::HostBridge(_))) {
            if !self.acs_enabled(n) {
                return false;
            }
            cur = self.node(n).parent;
        }
        true
    }

    /// The node whose group a node joins: itself when the path above it isolates it, else the
    /// group of the bridge above.
    fn group_anchor(&self, id: NodeId) -> NodeId {
        let mut cur = id;
        while let Some(parent) = self.node(cur).parent {
            if matches!(self.node(parent).kind, NodeKind::HostBridge(_))
                || self.acs_path_enabled(parent)
            {
                break;
            }
            cur = parent;
        }
        cur
    }

    /// The IOMMU groups of every addressed node (ports too, as Linux groups them), each group
    /// as its members' addresses in topology order, groups in the order of their first member.
    pub fn iommu_groups(&self) -> Vec<Vec<PciAddr>> {
        let mut groups: BTreeMap<NodeId, Vec<PciAddr>> = BTreeMap::new();
        for id in self.node_ids() {
            if let Some(a) = self.node(id).addr {
                groups.entry(self.group_anchor(id)).or_default().push(a);
            }
        }
        let mut out: Vec<Vec<PciAddr>> = groups.into_values().collect();
        out.sort_by_key(|g| g.first().and_then(|&a| self.lookup(a).ok()));
        out
    }

    /// The same topology with other ACS control bits on some ports: what-if models for advice.
    /// Nothing changes any device.
    pub fn with_acs(&self, changes: &[(PciAddr, AcsFlags)]) -> crate::Result<Topology> {
        let mut nodes = self.nodes.clone();
        for &(addr, acs) in changes {
            let id = self.lookup(addr)?;
            nodes[id.index()].acs = acs;
        }
        Ok(Topology::from_nodes(nodes, self.cpu_p2p).with_nvlinks(self.nvlinks.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::presets;
    use super::*;

    use crate::topology::test_util::a;

    fn group_of(groups: &[Vec<PciAddr>], x: PciAddr) -> &Vec<PciAddr> {
        groups.iter().find(|g| g.contains(&x)).unwrap()
    }

    /// The ACS switch preset with its root port isolating too (the preset leaves it without
    /// ACS, so everything below it shares the root port's group, as Linux groups it).
    fn isolated() -> Topology {
        presets::acs_switch()
            .unwrap()
            .with_acs(&[(a("00:01.0"), AcsFlags::LINUX_ISOLATION)])
            .unwrap()
    }

    #[test]
    fn a_root_port_without_acs_groups_everything_below_it() {
        let t = presets::acs_switch().unwrap();
        let groups = t.iommu_groups();
        let below = group_of(&groups, a("00:01.0"));
        assert!(below.contains(&a("03:00.0")) && below.contains(&a("06:00.0")));
        // The other host bridge's root port has ACS: its NIC stands alone.
        assert_eq!(group_of(&groups, a("81:00.0")), &vec![a("81:00.0")]);
    }

    #[test]
    fn isolating_ports_give_each_device_its_own_group() {
        let t = isolated();
        let groups = t.iommu_groups();
        for (addr, _) in t.endpoints() {
            assert_eq!(group_of(&groups, addr), &vec![addr], "{groups:?}");
        }
    }

    #[test]
    fn a_port_without_redirect_joins_what_is_below_it() {
        let t = isolated();
        let gpu = a("03:00.0");
        let port = t.node(t.lookup(gpu).unwrap()).parent.unwrap();
        let port_addr = t.node(port).addr.unwrap();
        let open = t
            .with_acs(&[(port_addr, AcsFlags::SV | AcsFlags::UF)])
            .unwrap();
        let groups = open.iommu_groups();
        assert_eq!(group_of(&groups, gpu), &vec![port_addr, gpu]);
        // The model is a copy: the original is unchanged.
        assert_eq!(group_of(&t.iommu_groups(), gpu), &vec![gpu]);
        assert!(t.with_acs(&[(a("7f:00.0"), AcsFlags::empty())]).is_err());
    }
}
