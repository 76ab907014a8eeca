//! Rebuilding a [`Topology`] from a Linux sysfs tree: `/sys` on a live machine, any directory in
//! tests.
//!
//! The device hierarchy under `devices/pci<segment>:<bus>` is the PCI tree: each host bridge
//! directory holds the devices of its root bus, and each bridge's directory holds the devices
//! below it. For every device this reads `class`, `vendor`, `device`, `resource` (BARs, CPU
//! addresses), `numa_node`, `dma_mask_bits`, the `iommu_group` link and `config`, from which it
//! takes the PCIe port type (so switch ports are recognised as such), the ACS capability and the
//! BAR registers (bus addresses: a host bridge that offsets its window shows here).
//!
//! A missing optional file is not an error; an unreadable or malformed one is, naming the path.
//! Anything that had to be assumed (a short `config`, a NUMA node of -1) is said in
//! [`SysfsScan::notes`], never silently guessed.
//!
//! ```no_run
//! let scan = p2p_core::topology::sysfs::scan(std::path::Path::new("/sys"))?;
//! for (addr, ep) in scan.topology.endpoints() {
//!     println!("{addr} {} {}", ep.class, ep.name);
//! }
//! for note in &scan.notes {
//!     eprintln!("note: {note}");
//! }
//! # Ok::<(), p2p_core::Error>(())
//! ```

mod attr;
pub mod config;
mod facts;
mod host;
mod place;
mod unknowns;

pub use config::{AcsState, ConfigImage, ConfigSpace, PortType};
pub use host::{function_dir, lexical};

use super::{limits, Bar, DeviceClass, HostBridgeAt, NodeId, Topology, TopologyBuilder};
use crate::addr::{BusAddr, PhysAddr};
use crate::error::Result;
use crate::pci::PciAddr;
use attr::sysfs_err;
use facts::Facts;
use place::Place;
use std::path::{Path, PathBuf};

/// The files [`scan`] reads in each PCI function's directory, besides the `iommu_group` link:
/// what a copy of a sysfs tree must hold to read back the same (`p2pctl snapshot` copies them).
pub const FUNCTION_FILES: &[&str] = &[
    "vendor",
    "device",
    "class",
    "resource",
    "numa_node",
    "dma_mask_bits",
    "config",
];

/// What sysfs says about one PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsDevice {
    /// Its address.
    pub addr: PciAddr,
    /// Its directory under `devices/`.
    pub path: PathBuf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code.
    pub class_code: u32,
    /// NUMA node (`None` when the kernel says -1 or the file is missing).
    pub numa_node: Option<u32>,
    /// Width of its streaming DMA mask, as the bound driver set it.
    pub dma_mask_bits: Option<u32>,
    /// Its IOMMU group, when an IOMMU translates for it.
    pub iommu_group: Option<u32>,
    /// The PCIe port type, when `config` was readable far enough and the device is PCIe.
    pub port_type: Option<PortType>,
    /// Its ACS capability.
    pub acs: AcsState,
    /// Its node in the topology.
    pub node: NodeId,
}

/// A topology read from sysfs, with the facts it was built from.
#[derive(Debug, Clone)]
pub struct SysfsScan {
    /// The tree.
    pub topology: Topology,
    /// Every PCI function found, in tree order.
    pub devices: Vec<SysfsDevice>,
    /// What had to be assumed, one sentence each.
    pub notes: Vec<String>,
}

impl SysfsScan {
    /// The facts of one device.
    pub fn device(&self, addr: PciAddr) -> Option<&SysfsDevice> {
        self.devices.iter().find(|d| d.addr == addr)
    }
}

/// Reads the PCI tree below `root` (a sysfs mount: `/sys`).
pub fn scan(root: &Path) -> Result<SysfsScan> {
    let mut s = Scanner {
        builder: TopologyBuilder::new(),
        devices: Vec::new(),
        notes: Vec::new(),
        unknowns: Default::default(),
    };
    let cpu = host::cpu_routes_p2p(root)?;
    s.builder.cpu_routes_p2p(cpu);
    let devices_dir = root.join("devices");
    for (segment, bus, dir) in host::host_bridge_dirs(root)? {
        s.host_bridge(root, segment, bus, &dir)?;
    }
    s.notes.extend(std::mem::take(&mut s.unknowns).into_notes());
    let topology = s
        .builder
        .build()
        .map_err(|e| sysfs_err(&devices_dir, e.to_string()))?;
    Ok(SysfsScan {
        topology,
        devices: s.devices,
        notes: s.notes,
    })
}

/// [`scan`], keeping only the topology.
pub fn read_topology(root: &Path) -> Result<Topology> {
    scan(root).map(|s| s.topology)
}

/// The entries of a directory, sorted (at most [`MAX_DIR_ENTRIES`](limits::MAX_DIR_ENTRIES)).
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| sysfs_err(dir, format!("cannot list: {e}")))?;
    let mut out = Vec::new();
    for entry in rd {
        if out.len() == limits::MAX_DIR_ENTRIES {
            return Err(limits::exceeded(
                &dir.display().to_string(),
                None,
                "directory entries",
                limits::MAX_DIR_ENTRIES as u64,
            ));
        }
        out.push(
            entry
                .map_err(|e| sysfs_err(dir, format!("cannot list: {e}")))?
                .path(),
        );
    }
    out.sort();
    Ok(out)
}

/// The PCI functions directly in a directory, in address order.
fn pci_children(dir: &Path) -> Result<Vec<(PciAddr, PathBuf)>> {
    let mut v: Vec<(PciAddr, PathBuf)> = read_dir(dir)?
        .into_iter()
        .filter_map(|p| {
            let a = p.file_name()?.to_str()?.parse::<PciAddr>().ok()?;
            // Bus-address-looking names that are not directories (never in real sysfs) are
            // not devices.
            p.is_dir().then_some((a, p))
        })
        .collect();
    v.sort();
    Ok(v)
}

struct Scanner {
    builder: TopologyBuilder,
    devices: Vec<SysfsDevice>,
    notes: Vec<String>,
    unknowns: unknowns::Unknowns,
}

impl Scanner {
    fn host_bridge(&mut self, root: &Path, segment: u32, bus: u8, dir: &Path) -> Result<()> {
        let children = pci_children(dir)?;
        let mut facts = Vec::with_capacity(children.len());
        for (_, path) in &children {
            facts.push(Facts::read(path)?);
        }
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pci")
            .to_owned();
        // pci_host_bridge_dev(): the first function on the root bus, if it sits at 00.0 or is a
        // root port; otherwise the host bridge has no identity and is not on the list.
        let hb_dev = children
            .iter()
            .zip(&facts)
            .next()
            .filter(|((a, _), f)| a.devfn() == 0 || f.port_type() == Some(PortType::RootPort));
        let p2p = hb_dev.map_or(Default::default(), |(_, f)| {
            super::allowlist::host_bridge_p2p(f.vendor, f.device)
        });
        let hb = self
            .builder
            .host_bridge(
                &name,
                HostBridgeAt {
                    segment,
                    bus,
                    ..HostBridgeAt::new(p2p)
                },
            )
            .map_err(|e| sysfs_err(dir, e.to_string()))?;
        let first = self.devices.len();
        let any = !children.is_empty();
        for ((addr, path), f) in children.into_iter().zip(facts) {
            self.place(hb, Place::HostBridge, addr, &path, f)?;
        }
        let numa = self.host_bridge_numa(&name, first, any);
        let socket = host::socket_of_node(root, numa)?.unwrap_or(numa);
        self.builder
            .place_host_bridge(hb, numa, socket)
            .map_err(|e| sysfs_err(dir, e.to_string()))?;
        Ok(())
    }

    /// The NUMA node of a host bridge: the one most devices below it report (root-bus functions
    /// often say -1 where the cards further down know), a disagreement said in a note.
    fn host_bridge_numa(&mut self, name: &str, first_device: usize, any: bool) -> u32 {
        let mut counts = std::collections::BTreeMap::<u32, usize>::new();
        for d in &self.devices[first_device..] {
            if let Some(n) = d.numa_node {
                *counts.entry(n).or_default() += 1;
            }
        }
        // The most reported node; the lowest among equals.
        let best = counts
            .iter()
            .max_by_key(|&(&node, &count)| (count, std::cmp::Reverse(node)))
            .map(|(&node, _)| node);
        match best {
            Some(node) if counts.len() > 1 => {
                let seen: Vec<String> = counts
                    .iter()
                    .map(|(n, c)| format!("node {n} ({c} devices)"))
                    .collect();
                self.notes.push(format!(
                    "{name}: devices below disagree on the NUMA node ({}): node {node} taken",
                    seen.join(", ")
                ));
                node
            }
            Some(node) => node,
            None => {
                if any {
                    self.notes.push(format!(
                        "{name}: no device gives a NUMA node (numa_node is -1 or missing): node 0 assumed"
                    ));
                }
                0
            }
        }
    }

    /// The functions below a bridge. The depth check comes first: a directory that links back
    /// to itself must end here, not in a stack overflow.
    fn subtree(&mut self, parent: NodeId, place: Place, dir: &Path) -> Result<()> {
        let depth = self.builder.depth_of(parent) + 1;
        limits::check_depth(depth, &dir.display().to_string(), || None)?;
        for (addr, path) in pci_children(dir)? {
            let f = Facts::read(&path)?;
            self.place(parent, place, addr, &path, f)?;
        }
        Ok(())
    }

    fn place(
        &mut self,
        parent: NodeId,
        parent_place: Place,
        addr: PciAddr,
        path: &Path,
        f: Facts,
    ) -> Result<()> {
        match &f.config {
            Some(c) if c.is_short() => self.unknowns.short_config.push(addr),
            None => self.unknowns.no_config.push(addr),
            Some(_) => {}
        }
        if f.is_bridge() {
            let (place, how) = place::bridge_place(addr, &f, parent_place, path)?;
            match how {
                place::How::Read => {}
                place::How::Inferred => self.unknowns.inferred.push((addr, place)),
                place::How::Moved(note) => self.notes.push(note),
            }
            let id = match place {
                Place::RootPort => self.builder.root_port(parent, addr),
                Place::SwitchUpstream => self.builder.switch(parent, addr),
                Place::SwitchDownstream => self.builder.downstream_port(parent, addr),
                _ => self.builder.bridge(parent, addr),
            }
            .map_err(|e| sysfs_err(path, e.to_string()))?;
            self.set_acs(id, &f, path)?;
            self.push_device(addr, path, &f, id);
            self.subtree(id, place, path)
        } else {
            let bars = self.bars(addr, path, &f)?;
            let class = DeviceClass::from_pci_class(f.class_code);
            let id = self
                .builder
                .endpoint(parent, addr, class, bars)
                .map_err(|e| sysfs_err(path, e.to_string()))?;
            self.builder
                .set_pci_class(id, f.class_code)
                .map_err(|e| sysfs_err(path, e.to_string()))?;
            self.set_acs(id, &f, path)?;
            self.push_device(addr, path, &f, id);
            Ok(())
        }
    }

    fn set_acs(&mut self, id: NodeId, f: &Facts, path: &Path) -> Result<()> {
        if let AcsState::Present { control, .. } = f.acs() {
            self.builder
                .set_acs(id, control)
                .map_err(|e| sysfs_err(path, e.to_string()))?;
        }
        Ok(())
    }

    /// Memory BARs: CPU addresses from `resource`, bus addresses from the BAR registers.
    fn bars(&mut self, addr: PciAddr, path: &Path, f: &Facts) -> Result<Vec<Bar>> {
        let resource = path.join("resource");
        let regions = match attr::optional_text(&resource)? {
            Some(_) => attr::resources(&resource)?,
            None => return Ok(Vec::new()),
        };
        let mut bars = Vec::new();
        for (index, r) in regions.iter().take(6).enumerate() {
            if !r.is_memory() {
                continue;
            }
            let index = index as u8;
            let bus = match f.config.as_ref().and_then(|c| c.bar_bus_address(index)) {
                Some(bus) => bus,
                None => r.start,
            };
            if bus != r.start {
                self.notes.push(format!(
                    "{addr}: BAR{index} is at CPU {:#x} but bus {bus:#x}: the host bridge offsets \
                     its window by {:#x}",
                    r.start,
                    bus.wrapping_sub(r.start)
                ));
            }
            let size = r.len().ok_or_else(|| {
                sysfs_err(
                    &resource,
                    format!(
                        "line {}: region {:#x}..={:#x} spans 2^64 bytes, more than a BAR decodes",
                        r.line, r.start, r.end
                    ),
                )
            })?;
            bars.push(Bar {
                index,
                cpu: PhysAddr(r.start),
                bus: BusAddr(bus),
                size,
            });
        }
        Ok(bars)
    }

    fn push_device(&mut self, addr: PciAddr, path: &Path, f: &Facts, node: NodeId) {
        self.devices.push(SysfsDevice {
            addr,
            path: path.to_owned(),
            vendor: f.vendor,
            device: f.device,
            class_code: f.class_code,
            numa_node: f.numa_node,
            dma_mask_bits: f.dma_mask_bits,
            iommu_group: f.iommu_group,
            port_type: f.port_type(),
            acs: f.acs(),
            node,
        });
    }
}
