//! Building a [`Topology`] node by node, with every structural rule checked as it is added.

use super::nvlink::{NvLinkTarget, NvLinks};
use super::{
    AcsFlags, Bar, DeviceClass, Endpoint, HostBridge, HostBridgeP2p, Node, NodeId, NodeKind,
    Topology,
};
use crate::addr::AddrRange;
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use std::collections::{HashMap, HashSet};

/// Builds a [`Topology`]. Each call checks that the node may hang where it is put (a root port
/// under a host bridge, a downstream port under a switch's upstream port, ...) and that PCI
/// addresses are unique; [`build`](Self::build) checks BARs for overlap.
///
/// ```
/// use p2p_core::topology::{TopologyBuilder, HostBridgeAt, HostBridgeP2p, DeviceClass, Bar, PathClass, Route};
/// # fn main() -> p2p_core::Result<()> {
/// let mut b = TopologyBuilder::new();
/// let hb = b.host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::None))?;
/// let rp = b.root_port(hb, "0000:00:01.0".parse()?)?;
/// let sw = b.switch(rp, "0000:01:00.0".parse()?)?;
/// let d0 = b.downstream_port(sw, "0000:02:00.0".parse()?)?;
/// let d1 = b.downstream_port(sw, "0000:02:01.0".parse()?)?;
/// let gpu = "0000:03:00.0".parse()?;
/// let nic = "0000:04:00.0".parse()?;
/// b.endpoint(d0, gpu, DeviceClass::Gpu, vec![Bar::identity(0, 0x4000_0000_00, 1 << 30)])?;
/// b.endpoint(d1, nic, DeviceClass::Nic, vec![])?;
/// let topo = b.build()?;
/// let path = topo.path(gpu, nic)?;
/// assert_eq!(path.class, PathClass::Pix);
/// assert_eq!(path.route, Route::BusAddr);
/// # Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
pub struct TopologyBuilder {
    nodes: Vec<Node>,
    addrs: HashSet<PciAddr>,
    /// Host bridges' names and (segment, root bus), so a file of thousands of `<cpu>`s is
    /// checked in linear time.
    bridge_names: HashSet<String>,
    bridge_buses: HashSet<(u32, u8)>,
    cpu_p2p: bool,
    class_counts: HashMap<DeviceClass, usize>,
    nvlinks: NvLinks,
}

/// Where a host bridge sits and what it forwards: the named arguments of
/// [`TopologyBuilder::host_bridge`]. Every field defaults to zero (segment 0, bus 0, NUMA node 0,
/// socket 0) and to no P2P forwarding.
///
/// ```
/// use p2p_core::topology::{HostBridgeAt, HostBridgeP2p};
/// let second_socket = HostBridgeAt { bus: 0x80, numa: 1, socket: 1, ..HostBridgeAt::new(HostBridgeP2p::Any) };
/// assert_eq!(second_socket.segment, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostBridgeAt {
    /// PCI segment (domain).
    pub segment: u32,
    /// The root bus number it owns.
    pub bus: u8,
    /// Its NUMA node.
    pub numa: u32,
    /// Its CPU socket.
    pub socket: u32,
    /// Whether it forwards peer-to-peer requests.
    pub p2p: HostBridgeP2p,
}

impl HostBridgeAt {
    /// Segment 0, bus 0, node 0, socket 0, forwarding P2P as `p2p` says.
    pub fn new(p2p: HostBridgeP2p) -> Self {
        Self {
            p2p,
            ..Self::default()
        }
    }
}

impl TopologyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that the CPU routes P2P between any host bridges (AMD Zen and later).
    pub fn cpu_routes_p2p(&mut self, yes: bool) -> &mut Self {
        self.cpu_p2p = yes;
        self
    }

    /// Adds a host bridge (root complex) named `name` (as Linux names its directory,
    /// `pci0000:00`), placed and allowed as `at` says.
    pub fn host_bridge(&mut self, name: &str, at: HostBridgeAt) -> Result<NodeId> {
        let HostBridgeAt {
            segment,
            bus,
            numa,
            socket,
            p2p,
        } = at;
        if name.is_empty() {
            return Err(Error::InvalidTopology("a host bridge needs a name".into()));
        }
        if self.bridge_names.contains(name) || self.bridge_buses.contains(&(segment, bus)) {
            return Err(Error::InvalidTopology(format!(
                "host bridge {name} (segment {segment:04x}, bus {bus:02x}) duplicates another"
            )));
        }
        self.bridge_names.insert(name.to_owned());
        self.bridge_buses.insert((segment, bus));
        Ok(self.push(Node {
            kind: NodeKind::HostBridge(HostBridge {
                name: name.to_owned(),
                segment,
                bus,
                numa,
                socket,
                p2p,
            }),
            addr: None,
            parent: None,
            acs: AcsFlags::empty(),
            depth: 0,
        }))
    }

    /// Moves a host bridge to another NUMA node and socket: readers that learn the node from the
    /// devices below a host bridge know it only after placing them.
    pub fn place_host_bridge(&mut self, id: NodeId, numa: u32, socket: u32) -> Result<&mut Self> {
        match self.nodes.get_mut(id.index()).map(|n| &mut n.kind) {
            Some(NodeKind::HostBridge(hb)) => {
                hb.numa = numa;
                hb.socket = socket;
                Ok(self)
            }
            _ => Err(Error::InvalidTopology(format!(
                "node {} is not a host bridge",
                id.0
            ))),
        }
    }

    /// Adds a root port below a host bridge.
    pub fn root_port(&mut self, host_bridge: NodeId, addr: PciAddr) -> Result<NodeId> {
        self.child(host_bridge, addr, NodeKind::RootPort, |k| {
            matches!(k, NodeKind::HostBridge(_))
        })
    }

    /// Adds a switch below a root port or a downstream port; returns its upstream port.
    pub fn switch(&mut self, parent: NodeId, upstream: PciAddr) -> Result<NodeId> {
        self.child(parent, upstream, NodeKind::SwitchUpstream, |k| {
            matches!(
                k,
                NodeKind::RootPort | NodeKind::SwitchDownstream | NodeKind::Bridge
            )
        })
    }

    /// Adds a bridge known only as a bridge ([`NodeKind::Bridge`]) below a host bridge, a root
    /// port, a switch downstream port or another such bridge.
    pub fn bridge(&mut self, parent: NodeId, addr: PciAddr) -> Result<NodeId> {
        self.child(parent, addr, NodeKind::Bridge, |k| {
            matches!(
                k,
                NodeKind::HostBridge(_)
                    | NodeKind::RootPort
                    | NodeKind::SwitchDownstream
                    | NodeKind::Bridge
            )
        })
    }

    /// [`bridge`](Self::bridge) without a PCI address: a bridge that an input names only by a
    /// label another node also uses (NCCL files of cloud VMs give synthetic switches such ids).
    pub fn unaddressed_bridge(&mut self, parent: NodeId) -> Result<NodeId> {
        self.child_at(parent, None, NodeKind::Bridge, |k| {
            matches!(
                k,
                NodeKind::HostBridge(_)
                    | NodeKind::RootPort
                    | NodeKind::SwitchDownstream
                    | NodeKind::Bridge
            )
        })
    }

    /// Whether a node with this address was added.
    pub fn contains(&self, addr: PciAddr) -> bool {
        self.addrs.contains(&addr)
    }

    /// Records `count` NVLinks from GPU `gpu` to `target`; [`build`](Self::build) checks that
    /// both ends are endpoints.
    pub fn nvlink(&mut self, gpu: PciAddr, target: NvLinkTarget, count: u32) -> &mut Self {
        self.nvlinks.add(gpu, target, count);
        self
    }

    /// Adds a downstream port to a switch (named by its upstream port).
    pub fn downstream_port(&mut self, switch: NodeId, addr: PciAddr) -> Result<NodeId> {
        self.child(switch, addr, NodeKind::SwitchDownstream, |k| {
            matches!(k, NodeKind::SwitchUpstream)
        })
    }

    /// Adds an endpoint below a root port, a downstream port, a [`bridge`](Self::bridge), or
    /// directly on a host bridge (a root-complex integrated endpoint).
    pub fn endpoint(
        &mut self,
        parent: NodeId,
        addr: PciAddr,
        class: DeviceClass,
        bars: Vec<Bar>,
    ) -> Result<NodeId> {
        let n = self.class_counts.get(&class).copied().unwrap_or(0);
        let name = format!("{}{}", class.name().to_uppercase(), n);
        let id = self.named_endpoint(parent, addr, class, bars, name)?;
        // Count only endpoints that were added, so a refused one leaves no trace.
        self.class_counts.insert(class, n + 1);
        Ok(id)
    }

    /// [`endpoint`](Self::endpoint) with a chosen display name.
    pub fn named_endpoint(
        &mut self,
        parent: NodeId,
        addr: PciAddr,
        class: DeviceClass,
        bars: Vec<Bar>,
        name: String,
    ) -> Result<NodeId> {
        let mut seen = HashSet::new();
        for bar in &bars {
            if bar.index > 5 || !seen.insert(bar.index) {
                return Err(Error::InvalidTopology(format!(
                    "device {addr}: BAR index {} is above 5 or repeated",
                    bar.index
                )));
            }
            if bar.size == 0 || !bar.size.is_power_of_two() {
                return Err(Error::InvalidTopology(format!(
                    "device {addr}: BAR{} size {:#x} is not a non-zero power of two",
                    bar.index, bar.size
                )));
            }
            AddrRange::new(bar.cpu, bar.size)?;
            AddrRange::new(bar.bus, bar.size)?;
        }
        self.child(
            parent,
            addr,
            NodeKind::Endpoint(Endpoint {
                class,
                bars,
                name,
                pci_class: None,
            }),
            |k| {
                matches!(
                    k,
                    NodeKind::RootPort
                        | NodeKind::SwitchDownstream
                        | NodeKind::HostBridge(_)
                        | NodeKind::Bridge
                )
            },
        )
    }

    /// Records an endpoint's 24-bit PCI class code.
    pub fn set_pci_class(&mut self, node: NodeId, code: u32) -> Result<&mut Self> {
        match self.nodes.get_mut(node.index()).map(|n| &mut n.kind) {
            Some(NodeKind::Endpoint(e)) => {
                e.pci_class = Some(code);
                Ok(self)
            }
            _ => Err(Error::InvalidTopology(format!(
                "node {} is not an endpoint",
                node.0
            ))),
        }
    }

    /// Sets the ACS control bits of a port or device.
    pub fn set_acs(&mut self, node: NodeId, acs: AcsFlags) -> Result<&mut Self> {
        let n = self
            .nodes
            .get_mut(node.index())
            .ok_or_else(|| Error::InvalidTopology(format!("no node {}", node.0)))?;
        if matches!(n.kind, NodeKind::HostBridge(_)) {
            return Err(Error::InvalidTopology(
                "a host bridge has no ACS capability".into(),
            ));
        }
        n.acs = acs;
        Ok(self)
    }

    /// Checks the BARs and freezes the topology.
    pub fn build(&self) -> Result<Topology> {
        if !self
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::HostBridge(_)))
        {
            return Err(Error::InvalidTopology("no host bridge".into()));
        }
        // No two BARs may decode the same CPU address.
        let mut bars: Vec<(u64, u64, PciAddr, u8)> = Vec::new();
        for n in &self.nodes {
            if let (NodeKind::Endpoint(e), Some(a)) = (&n.kind, n.addr) {
                bars.extend(e.bars.iter().map(|b| (b.cpu.0, b.size, a, b.index)));
            }
        }
        bars.sort_unstable();
        for w in bars.windows(2) {
            let ((s0, l0, a0, i0), (s1, _, a1, i1)) = (w[0], w[1]);
            if s0 + l0 > s1 {
                return Err(Error::InvalidTopology(format!(
                    "BAR{i0} of {a0} at {s0:#x} overlaps BAR{i1} of {a1} at {s1:#x}"
                )));
            }
        }
        self.check_nvlinks()?;
        Ok(Topology::from_nodes(self.nodes.clone(), self.cpu_p2p)
            .with_nvlinks(self.nvlinks.clone()))
    }

    /// Every NVLink end must be an endpoint that was added.
    fn check_nvlinks(&self) -> Result<()> {
        let endpoints: HashSet<PciAddr> = self
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Endpoint(_)))
            .filter_map(|n| n.addr)
            .collect();
        for (gpu, target, _) in self.nvlinks.iter() {
            let far = match target {
                NvLinkTarget::Gpu(g) => Some(g),
                NvLinkTarget::NvSwitch => None,
            };
            if let Some(a) = std::iter::once(gpu)
                .chain(far)
                .find(|a| !endpoints.contains(a))
            {
                return Err(Error::InvalidTopology(format!(
                    "an NVLink ends at {a}, which is not an endpoint"
                )));
            }
        }
        Ok(())
    }

    fn child(
        &mut self,
        parent: NodeId,
        addr: PciAddr,
        kind: NodeKind,
        parent_ok: impl Fn(&NodeKind) -> bool,
    ) -> Result<NodeId> {
        self.child_at(parent, Some(addr), kind, parent_ok)
    }

    fn child_at(
        &mut self,
        parent: NodeId,
        addr: Option<PciAddr>,
        kind: NodeKind,
        parent_ok: impl Fn(&NodeKind) -> bool,
    ) -> Result<NodeId> {
        let what = kind_name(&kind);
        let addr_text = addr.map_or_else(|| "(no address)".to_owned(), |a| a.to_string());
        let addr = (addr, addr_text);
        let p = self.nodes.get(parent.index()).ok_or_else(|| {
            Error::InvalidTopology(format!("{what} {}: no parent node {}", addr.1, parent.0))
        })?;
        if !parent_ok(&p.kind) {
            return Err(Error::InvalidTopology(format!(
                "{what} {} cannot hang below a {}",
                addr.1,
                kind_name(&p.kind)
            )));
        }
        if let Some(a) = addr.0.filter(|a| self.addrs.contains(a)) {
            return Err(Error::InvalidTopology(format!(
                "PCI address {a} is used twice"
            )));
        }
        let depth = p.depth + 1;
        if depth > super::limits::MAX_DEPTH {
            return Err(Error::InvalidTopology(format!(
                "{what} {} would sit {depth} levels below its host bridge (at most {})",
                addr.1,
                super::limits::MAX_DEPTH
            )));
        }
        self.addrs.extend(addr.0);
        Ok(self.push(Node {
            kind,
            addr: addr.0,
            parent: Some(parent),
            acs: AcsFlags::empty(),
            depth,
        }))
    }

    /// Depth of a node added so far (0 for a host bridge or an unknown id).
    pub(crate) fn depth_of(&self, id: NodeId) -> u32 {
        self.nodes.get(id.index()).map_or(0, |n| n.depth)
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        NodeId(self.nodes.len() as u32 - 1)
    }
}

/// A human name for a node kind, for messages and files.
pub(crate) fn kind_name(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::HostBridge(_) => "host bridge",
        NodeKind::RootPort => "root port",
        NodeKind::SwitchUpstream => "switch upstream port",
        NodeKind::SwitchDownstream => "switch downstream port",
        NodeKind::Bridge => "bridge",
        NodeKind::Endpoint(_) => "endpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> PciAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rejects_bad_structure() {
        let mut b = TopologyBuilder::new();
        assert!(matches!(b.build(), Err(Error::InvalidTopology(_))));
        let hb = b
            .host_bridge("hb0", HostBridgeAt::new(HostBridgeP2p::None))
            .unwrap();
        assert!(b
            .host_bridge(
                "hb0",
                HostBridgeAt {
                    bus: 1,
                    ..HostBridgeAt::new(HostBridgeP2p::None)
                }
            )
            .is_err());
        assert!(
            b.downstream_port(hb, a("00:01.0")).is_err(),
            "downstream port on a host bridge"
        );
        let rp = b.root_port(hb, a("00:01.0")).unwrap();
        assert!(b.root_port(hb, a("00:01.0")).is_err(), "duplicate address");
        assert!(
            b.root_port(rp, a("00:02.0")).is_err(),
            "root port below a root port"
        );
        let ep = b
            .endpoint(rp, a("01:00.0"), DeviceClass::Gpu, vec![])
            .unwrap();
        assert!(
            b.switch(ep, a("02:00.0")).is_err(),
            "switch below an endpoint"
        );
        assert!(b.set_acs(hb, AcsFlags::RR).is_err());
        assert!(b.root_port(NodeId(99), a("00:03.0")).is_err());
    }

    #[test]
    fn rejects_bad_bars() {
        let mut b = TopologyBuilder::new();
        let hb = b
            .host_bridge("hb0", HostBridgeAt::new(HostBridgeP2p::None))
            .unwrap();
        let rp = b.root_port(hb, a("00:01.0")).unwrap();
        let rp2 = b.root_port(hb, a("00:02.0")).unwrap();
        for bars in [
            vec![Bar::identity(0, 0x1000, 0x3000)],
            vec![Bar::identity(6, 0x1000, 0x1000)],
            vec![
                Bar::identity(0, 0x1000, 0x1000),
                Bar::identity(0, 0x4000, 0x1000),
            ],
            vec![Bar::identity(0, u64::MAX - 0xfff, 0x2000)],
        ] {
            assert!(b
                .clone()
                .endpoint(rp, a("01:00.0"), DeviceClass::Gpu, bars)
                .is_err());
        }
        b.endpoint(
            rp,
            a("01:00.0"),
            DeviceClass::Gpu,
            vec![Bar::identity(0, 0x10000, 0x10000)],
        )
        .unwrap();
        b.endpoint(
            rp2,
            a("02:00.0"),
            DeviceClass::Nic,
            vec![Bar::identity(0, 0x18000, 0x1000)],
        )
        .unwrap();
        let err = b.build().unwrap_err().to_string();
        assert!(
            err.contains("overlaps") && err.contains("0000:02:00.0"),
            "{err}"
        );
    }
}
