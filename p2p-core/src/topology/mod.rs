//! The PCIe topology: a tree per host bridge of root ports, switches and endpoints, with ACS bits
//! on every port, and the classification of any pair of endpoints ([`Topology::path`]).
//!
//! Build one with [`TopologyBuilder`], read one from the JSON format in [`file`](mod@file), from a
//! Linux [`sysfs`] tree, from an [`nccl`] topology file, or take a [`presets`] machine.

mod acs;
pub mod advice;
pub mod allowlist;
mod builder;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub mod file;
pub mod groups;
pub mod limits;
#[cfg(feature = "nccl")]
#[cfg_attr(docsrs, doc(cfg(feature = "nccl")))]
pub mod nccl;
pub mod nvlink;
mod path;
pub mod presets;
pub mod rank;
#[cfg(feature = "render")]
#[cfg_attr(docsrs, doc(cfg(feature = "render")))]
pub mod render;
#[cfg(feature = "sysfs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sysfs")))]
pub mod sysfs;

pub use acs::AcsFlags;
pub use builder::{HostBridgeAt, TopologyBuilder};
pub use groups::REQUIRED_FOR_ISOLATION;
pub use path::{PathClass, PathInfo, Route, Unsupported};

use crate::addr::{BusAddr, PhysAddr};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Index of a node in a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a host bridge allows for peer-to-peer traffic that reaches it (Linux's
/// `host_bridge_whitelist` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum HostBridgeP2p {
    /// Not on the allow-list: P2P through it is not supported.
    #[default]
    None,
    /// Allowed only between two devices below this same host bridge (Intel Xeon E5/E7 v1–v3).
    SameBridge,
    /// Allowed, also to devices below other allowed host bridges (Skylake-E, Ice Lake).
    Any,
}

/// A host bridge (root complex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBridge {
    /// A name for messages and output ("pci0000:00").
    pub name: String,
    /// PCI segment (32-bit, as Linux numbers domains).
    pub segment: u32,
    /// The root bus number.
    pub bus: u8,
    /// The NUMA node it belongs to.
    pub numa: u32,
    /// The CPU socket it belongs to.
    pub socket: u32,
    /// Whether it routes peer-to-peer traffic.
    pub p2p: HostBridgeP2p,
}

/// The class of an endpoint, coarse as NCCL and `nvidia-smi` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DeviceClass {
    /// A GPU (display or 3D controller).
    Gpu,
    /// A network controller (RDMA NIC).
    Nic,
    /// An NVMe controller.
    Nvme,
    /// An accelerator (processing accelerator class).
    Accelerator,
    /// Anything else.
    Other,
}

impl DeviceClass {
    /// The class of a device from its 24-bit PCI class code (`0x030200`): display controllers
    /// are GPUs, network controllers and InfiniBand controllers (`0x0c06`) NICs, `0x010802` NVMe, processing
    /// accelerators and co-processors accelerators.
    pub fn from_pci_class(code: u32) -> Self {
        match (code >> 16, (code >> 8) & 0xff) {
            (0x03, _) => DeviceClass::Gpu,
            // 0x0c06: InfiniBand controllers (serial bus class) as older HCAs report it.
            (0x02, _) | (0x0c, 0x06) => DeviceClass::Nic,
            (0x01, 0x08) if code & 0xff == 0x02 => DeviceClass::Nvme,
            (0x12, _) | (0x0b, 0x40) => DeviceClass::Accelerator,
            _ => DeviceClass::Other,
        }
    }

    /// The lowercase name used in files and output.
    pub fn name(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "gpu",
            DeviceClass::Nic => "nic",
            DeviceClass::Nvme => "nvme",
            DeviceClass::Accelerator => "accelerator",
            DeviceClass::Other => "other",
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A memory BAR of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Bar {
    /// BAR index (0..=5).
    pub index: u8,
    /// CPU physical address of the BAR.
    pub cpu: PhysAddr,
    /// PCI bus address of the BAR (equal to `cpu` unless the host bridge window is offset).
    pub bus: BusAddr,
    /// Size in bytes.
    #[cfg_attr(feature = "serde", serde(with = "crate::hex"))]
    pub size: u64,
}

impl Bar {
    /// A BAR whose bus address equals its CPU address.
    pub fn identity(index: u8, cpu: u64, size: u64) -> Self {
        Self {
            index,
            cpu: PhysAddr(cpu),
            bus: BusAddr(cpu),
            size,
        }
    }

    /// `bus − cpu` (Linux's `pci_bus_address() − pci_resource_start()`), two's complement.
    pub fn bus_offset(&self) -> u64 {
        self.bus.0.wrapping_sub(self.cpu.0)
    }
}

/// An endpoint device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its class.
    pub class: DeviceClass,
    /// Its memory BARs.
    pub bars: Vec<Bar>,
    /// A name for output ("GPU0"); defaults to the class and an index.
    pub name: String,
    /// Its 24-bit PCI class code, when the input says (sysfs and NCCL files do).
    pub pci_class: Option<u32>,
}

impl Endpoint {
    /// Whether the device can take part in DMA as p2pdma sees it: a GPU, NIC, NVMe drive or
    /// accelerator, or any other function with a memory BAR that is not a bridge (class 0x06:
    /// the host bridge's own function, ISA and other bridges). A real root complex holds dozens
    /// of system-peripheral functions that no one maps.
    pub fn is_dma_capable(&self) -> bool {
        match self.class {
            DeviceClass::Other => {
                !self.bars.is_empty() && self.pci_class.is_none_or(|c| c >> 16 != 0x06)
            }
            _ => true,
        }
    }
}

/// What a node of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A host bridge: the root of a tree.
    HostBridge(HostBridge),
    /// A root port of a host bridge.
    RootPort,
    /// The upstream port of a PCIe switch.
    SwitchUpstream,
    /// A downstream port of a PCIe switch.
    SwitchDownstream,
    /// A bridge known only as a bridge: a conventional PCI-to-PCI bridge, a PCIe-to-PCI bridge,
    /// or a PCIe switch as an NCCL topology file names it (by its upstream port). On a path it
    /// counts as one bridge; it may hold bridges, switches and endpoints.
    Bridge,
    /// An endpoint device.
    Endpoint(Endpoint),
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Its PCI address (none for a host bridge).
    pub addr: Option<PciAddr>,
    /// The node above it (none for a host bridge).
    pub parent: Option<NodeId>,
    /// Its ACS control bits (empty for a device without ACS).
    pub acs: AcsFlags,
    /// Distance from its host bridge (the host bridge is 0).
    pub depth: u32,
}

/// A PCIe topology. Immutable once built; every built topology has its own
/// [`generation`](Topology::generation), so caches keyed on it notice any change.
#[derive(Debug, Clone)]
pub struct Topology {
    nodes: Vec<Node>,
    children: Vec<Vec<NodeId>>,
    by_addr: HashMap<PciAddr, NodeId>,
    cpu_p2p: bool,
    nvlinks: nvlink::NvLinks,
    generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl Topology {
    pub(crate) fn from_nodes(nodes: Vec<Node>, cpu_p2p: bool) -> Self {
        let mut children = vec![Vec::new(); nodes.len()];
        let mut by_addr = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(p) = n.parent {
                children[p.index()].push(NodeId(i as u32));
            }
            if let Some(a) = n.addr {
                by_addr.insert(a, NodeId(i as u32));
            }
        }
        Self {
            nodes,
            children,
            by_addr,
            cpu_p2p,
            nvlinks: nvlink::NvLinks::default(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(crate) fn with_nvlinks(mut self, nvlinks: nvlink::NvLinks) -> Self {
        self.nvlinks = nvlinks;
        self
    }

    /// The NVLinks between GPUs (beside the PCIe tree; routes never use them).
    pub fn nvlinks(&self) -> &nvlink::NvLinks {
        &self.nvlinks
    }

    /// A number no other topology built in this process has: caches compare it to notice change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the CPU routes peer-to-peer between any host bridges (Linux's
    /// `cpu_supports_p2pdma()`: AMD Zen and later).
    pub fn cpu_routes_p2p(&self) -> bool {
        self.cpu_p2p
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// The children of a node, in insertion order.
    pub fn children(&self, id: NodeId) -> &[NodeId] {
        &self.children[id.index()]
    }

    /// All node ids, parents before children.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// The host bridges, in order.
    pub fn host_bridges(&self) -> impl Iterator<Item = (NodeId, &HostBridge)> + '_ {
        self.node_ids().filter_map(|id| match &self.node(id).kind {
            NodeKind::HostBridge(hb) => Some((id, hb)),
            _ => None,
        })
    }

    /// The endpoints, in order of insertion.
    pub fn endpoints(&self) -> impl Iterator<Item = (PciAddr, &Endpoint)> + '_ {
        self.nodes.iter().filter_map(|n| match (&n.kind, n.addr) {
            (NodeKind::Endpoint(e), Some(a)) => Some((a, e)),
            _ => None,
        })
    }

    /// The node at a PCI address.
    pub fn lookup(&self, addr: PciAddr) -> Result<NodeId> {
        self.by_addr
            .get(&addr)
            .copied()
            .ok_or(Error::UnknownDevice(addr))
    }

    /// The endpoint at a PCI address; an error if there is none or it is a port.
    pub fn endpoint(&self, addr: PciAddr) -> Result<&Endpoint> {
        match &self.node(self.lookup(addr)?).kind {
            NodeKind::Endpoint(e) => Ok(e),
            _ => Err(Error::NotAnEndpoint(addr)),
        }
    }

    /// The largest memory BAR of an endpoint: where a GPU's or accelerator's exportable memory
    /// is; [`Error::InvalidTopology`] if it has none.
    pub fn largest_bar(&self, addr: PciAddr) -> Result<Bar> {
        self.endpoint(addr)?
            .bars
            .iter()
            .max_by_key(|b| b.size)
            .copied()
            .ok_or_else(|| Error::InvalidTopology(format!("device {addr} has no BAR to export")))
    }

    /// The host bridge above a node.
    pub fn host_bridge_of(&self, id: NodeId) -> (NodeId, &HostBridge) {
        let mut cur = id;
        while let Some(p) = self.node(cur).parent {
            cur = p;
        }
        match &self.node(cur).kind {
            NodeKind::HostBridge(hb) => (cur, hb),
            // The builder only creates trees rooted at host bridges.
            _ => unreachable!("topology tree not rooted at a host bridge"),
        }
    }

    /// The NUMA node of a device.
    pub fn numa_of(&self, addr: PciAddr) -> Result<u32> {
        Ok(self.host_bridge_of(self.lookup(addr)?).1.numa)
    }

    /// The switch a port belongs to, named by its upstream port; `None` for other nodes.
    pub(crate) fn switch_of(&self, id: NodeId) -> Option<NodeId> {
        match self.node(id).kind {
            NodeKind::SwitchUpstream => Some(id),
            NodeKind::SwitchDownstream => self.node(id).parent,
            _ => None,
        }
    }

    /// A display name for an endpoint (its name, else its address).
    pub fn display_name(&self, addr: PciAddr) -> String {
        match self.endpoint(addr) {
            Ok(e) => e.name.clone(),
            Err(_) => addr.to_string(),
        }
    }
}

/// Helpers for this module's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::pci::PciAddr;

    /// A PCI address from a literal the test controls.
    pub fn a(s: &str) -> PciAddr {
        s.parse().expect("a test's PCI address literal")
    }
}
