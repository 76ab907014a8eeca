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
mod host;

pub use config::{AcsState, ConfigImage, ConfigSpace, PortType};

use super::{limits, Bar, DeviceClass, NodeId, Topology, TopologyBuilder};
use crate::addr::{BusAddr, PhysAddr};
use crate::error::Result;
use crate::pci::PciAddr;
use attr::sysfs_err;
use std::path::{Path, PathBuf};

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
    };
    let cpu = host::cpu_routes_p2p(root)?;
    s.builder.cpu_routes_p2p(cpu);
    let devices_dir = root.join("devices");
    let mut bridges: Vec<(u16, u8, PathBuf)> = Vec::new();
    for entry in read_dir(&devices_dir)? {
        let Some(name) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        match host::parse_host_bridge_name(&name) {
            Some(Ok((seg, bus))) => bridges.push((seg, bus, entry)),
            Some(Err(why)) => s.notes.push(format!("{}: skipped: {why}", entry.display())),
            None => {}
        }
    }
    bridges.sort();
    for (segment, bus, dir) in bridges {
        s.host_bridge(root, segment, bus, &dir)?;
    }
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

/// What a node of the tree being built is, to decide what may hang below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    HostBridge,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    Bridge,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::HostBridge => "host bridge",
            Place::RootPort => "root port",
            Place::SwitchUpstream => "switch upstream port",
            Place::SwitchDownstream => "switch downstream port",
            Place::Bridge => "bridge",
        }
    }

    /// Whether a bridge of kind `self` may hang below `parent`.
    fn fits_below(self, parent: Place) -> bool {
        use Place::*;
        match self {
            RootPort => parent == HostBridge,
            SwitchUpstream => matches!(parent, RootPort | SwitchDownstream | Bridge),
            SwitchDownstream => parent == SwitchUpstream,
            Bridge => matches!(parent, HostBridge | RootPort | SwitchDownstream | Bridge),
            HostBridge => false,
        }
    }
}

/// One function's files, read before it is placed.
struct Facts {
    vendor: u16,
    device: u16,
    class_code: u32,
    numa_node: Option<u32>,
    dma_mask_bits: Option<u32>,
    iommu_group: Option<u32>,
    config: Option<ConfigSpace>,
}

impl Facts {
    fn read(dir: &Path) -> Result<Self> {
        let vendor = attr::hex(&dir.join("vendor"), 16)? as u16;
        let device = attr::hex(&dir.join("device"), 16)? as u16;
        let class_code = attr::hex(&dir.join("class"), 24)? as u32;
        let numa_node =
            attr::optional_int(&dir.join("numa_node"))?.and_then(|n| u32::try_from(n).ok());
        let mask_path = dir.join("dma_mask_bits");
        let dma_mask_bits = attr::optional_int(&mask_path)?
            .map(|b| {
                u32::try_from(b)
                    .ok()
                    .filter(|b| (1..=64).contains(b))
                    .ok_or_else(|| sysfs_err(&mask_path, format!("{b} is not a mask width")))
            })
            .transpose()?;
        let group_path = dir.join("iommu_group");
        let iommu_group = match std::fs::read_link(&group_path) {
            Ok(target) => Some(
                target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| {
                        sysfs_err(
                            &group_path,
                            format!("links to {}, not a group number", target.display()),
                        )
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(sysfs_err(&group_path, format!("cannot read link: {e}"))),
        };
        let config =
            attr::config_bytes(&dir.join("config"))?.map(|(b, len)| ConfigSpace::new(b, len));
        Ok(Self {
            vendor,
            device,
            class_code,
            numa_node,
            dma_mask_bits,
            iommu_group,
            config,
        })
    }

    fn is_bridge(&self) -> bool {
        matches!(self.class_code >> 8, 0x0604 | 0x0609)
            || self.config.as_ref().and_then(ConfigSpace::header_type) == Some(1)
    }

    fn port_type(&self) -> Option<PortType> {
        self.config.as_ref().and_then(ConfigSpace::port_type)
    }

    fn acs(&self) -> AcsState {
        self.config
            .as_ref()
            .map_or(AcsState::Unknown, ConfigSpace::acs)
    }
}

struct Scanner {
    builder: TopologyBuilder,
    devices: Vec<SysfsDevice>,
    notes: Vec<String>,
}

impl Scanner {
    fn host_bridge(&mut self, root: &Path, segment: u16, bus: u8, dir: &Path) -> Result<()> {
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
        let numa = match facts.iter().find_map(|f| f.numa_node) {
            Some(n) => n,
            None => {
                if !children.is_empty() {
                    self.notes.push(format!(
                        "{name}: no device gives a NUMA node (numa_node is -1 or missing): node 0 assumed"
                    ));
                }
                0
            }
        };
        let socket = host::socket_of_node(root, numa)?.unwrap_or(numa);
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
            .host_bridge(&name, segment, bus, numa, socket, p2p)
            .map_err(|e| sysfs_err(dir, e.to_string()))?;
        for ((addr, path), f) in children.into_iter().zip(facts) {
            self.place(hb, Place::HostBridge, addr, &path, f)?;
        }
        Ok(())
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
            Some(c) if c.is_short() => self.notes.push(format!(
                "{addr}: config is readable only in part (reading all of it needs CAP_SYS_ADMIN): \
                 ACS unknown{}",
                if f.is_bridge() {
                    " and its port type unknown"
                } else {
                    ""
                }
            )),
            None => self
                .notes
                .push(format!("{addr}: no config file: ACS and port type unknown")),
            Some(_) => {}
        }
        if f.is_bridge() {
            let place = self.bridge_place(addr, &f, parent_place);
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
            self.set_acs(id, &f, path)?;
            self.push_device(addr, path, &f, id);
            Ok(())
        }
    }

    /// What a bridge is: its PCIe port type when that fits where it sits, else what its place
    /// in the tree makes it (said in a note).
    fn bridge_place(&mut self, addr: PciAddr, f: &Facts, parent: Place) -> Place {
        let wanted = match f.port_type() {
            Some(PortType::RootPort) => Place::RootPort,
            Some(PortType::SwitchUpstream) => Place::SwitchUpstream,
            Some(PortType::SwitchDownstream) => Place::SwitchDownstream,
            _ => Place::Bridge,
        };
        if wanted.fits_below(parent) {
            return wanted;
        }
        let fallback = if Place::Bridge.fits_below(parent) {
            Place::Bridge
        } else {
            Place::SwitchDownstream
        };
        self.notes.push(format!(
            "{addr}: a {} cannot sit below a {}: taken as a {}",
            wanted.name(),
            parent.name(),
            fallback.name()
        ));
        fallback
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
