//! Builds sysfs trees in temporary directories, file for file as Linux lays them out: device
//! directories nested below their bridges under `devices/pci<seg>:<bus>`, each with the
//! attributes `drivers/pci/pci-sysfs.c` creates, the `/sys/bus/pci/devices` links, IOMMU group
//! links, NUMA nodes and the CPU modalias.

#![allow(dead_code)]

use p2p_core::topology::sysfs::ConfigImage;
use p2p_core::topology::AcsFlags;
use std::fs;
use std::path::{Path, PathBuf};

/// A sysfs tree that is removed when dropped.
pub struct FakeSysfs {
    pub root: PathBuf,
}

/// One PCI function to write.
#[derive(Clone)]
pub struct Dev {
    pub addr: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    /// PCIe port type register value (0 endpoint, 4 root port, 5 upstream, 6 downstream, 7
    /// PCIe-to-PCI bridge); `None` for a conventional PCI function (256-byte config, no PCIe
    /// capability).
    pub port_type: Option<u8>,
    pub acs: Option<(u16, AcsFlags)>,
    /// Memory BARs: (index, CPU address, size).
    pub bars: Vec<(u8, u64, u64)>,
    /// Added to every BAR's CPU address in its register (a host bridge window offset).
    pub bus_offset: u64,
    pub numa: i32,
    pub dma_mask_bits: u32,
    pub iommu_group: Option<u32>,
    /// Readable bytes of `config` (64 is what an unprivileged reader gets); `None` for all.
    pub config_readable: Option<usize>,
}

impl Dev {
    pub fn endpoint(addr: &str, vendor: u16, device: u16, class: u32) -> Self {
        Self {
            addr: addr.to_owned(),
            vendor,
            device,
            class,
            port_type: Some(0),
            acs: None,
            bars: Vec::new(),
            bus_offset: 0,
            numa: -1,
            dma_mask_bits: 64,
            iommu_group: None,
            config_readable: None,
        }
    }

    pub fn port(addr: &str, vendor: u16, device: u16, port_type: u8) -> Self {
        Self {
            port_type: Some(port_type),
            dma_mask_bits: 32,
            ..Self::endpoint(addr, vendor, device, 0x060400)
        }
    }

    pub fn bar(mut self, index: u8, cpu: u64, size: u64) -> Self {
        self.bars.push((index, cpu, size));
        self
    }

    pub fn acs(mut self, cap: u16, ctrl: AcsFlags) -> Self {
        self.acs = Some((cap, ctrl));
        self
    }

    pub fn numa(mut self, n: i32) -> Self {
        self.numa = n;
        self
    }

    pub fn group(mut self, g: u32) -> Self {
        self.iommu_group = Some(g);
        self
    }

    pub fn mask(mut self, bits: u32) -> Self {
        self.dma_mask_bits = bits;
        self
    }
}

impl FakeSysfs {
    pub fn new(name: &str) -> Self {
        // tmpfs when there is one: these trees are thousands of tiny files.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let root = base.join(format!(
            "p2pdma-sysfs-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
        Self { root }
    }

    fn write(path: &Path, contents: impl AsRef<[u8]>) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// `devices/system/cpu/modalias` for an x86 CPU (vendor 0 Intel, 2 AMD).
    pub fn cpu(&self, vendor: u32, family: u32, model: u32) -> &Self {
        Self::write(
            &self.root.join("devices/system/cpu/modalias"),
            format!(
                "cpu:type:x86,ven{vendor:04X}fam{family:04X}mod{model:04X}:feature:,0000,0001\n"
            ),
        );
        self
    }

    /// A NUMA node with its CPUs, all in one package.
    pub fn node(&self, node: u32, first_cpu: u32, cpus: u32, package: u32) -> &Self {
        Self::write(
            &self
                .root
                .join(format!("devices/system/node/node{node}/cpulist")),
            format!("{first_cpu}-{}\n", first_cpu + cpus - 1),
        );
        for c in first_cpu..first_cpu + cpus {
            Self::write(
                &self.root.join(format!(
                    "devices/system/cpu/cpu{c}/topology/physical_package_id"
                )),
                format!("{package}\n"),
            );
        }
        self
    }

    /// `devices/pci<seg>:<bus>`, with the files Linux puts there.
    pub fn host_bridge(&self, segment: u32, bus: u8) -> PathBuf {
        let dir = self
            .root
            .join(format!("devices/pci{segment:04x}:{bus:02x}"));
        fs::create_dir_all(dir.join("power")).unwrap();
        Self::write(&dir.join("uevent"), "");
        Self::write(
            &dir.join(format!("pci_bus/{segment:04x}:{bus:02x}/cpuaffinity")),
            "ffff\n",
        );
        dir
    }

    /// Writes a function below `parent` (a host bridge or bridge directory); returns its
    /// directory.
    pub fn device(&self, parent: &Path, d: &Dev) -> PathBuf {
        let dir = parent.join(&d.addr);
        fs::create_dir_all(dir.join("power")).unwrap();
        let w = |name: &str, text: String| Self::write(&dir.join(name), text);
        w("vendor", format!("0x{:04x}\n", d.vendor));
        w("device", format!("0x{:04x}\n", d.device));
        w("subsystem_vendor", format!("0x{:04x}\n", d.vendor));
        w("subsystem_device", "0x0000\n".into());
        w("class", format!("0x{:06x}\n", d.class));
        w("revision", "0x01\n".into());
        w("irq", "0\n".into());
        w("enable", "1\n".into());
        w("numa_node", format!("{}\n", d.numa));
        w("local_cpulist", "0-15\n".into());
        w("dma_mask_bits", format!("{}\n", d.dma_mask_bits));
        w("consistent_dma_mask_bits", format!("{}\n", d.dma_mask_bits));
        w("broken_parity_status", "0\n".into());
        w("d3cold_allowed", "1\n".into());
        w("msi_bus", "1\n".into());
        w(
            "modalias",
            format!(
                "pci:v0000{:04X}d0000{:04X}sv0000{:04X}sd00000000bc{:02X}sc{:02X}i{:02X}\n",
                d.vendor,
                d.device,
                d.vendor,
                d.class >> 16,
                (d.class >> 8) & 0xff,
                d.class & 0xff
            ),
        );
        w(
            "uevent",
            format!(
                "PCI_CLASS={:X}\nPCI_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\n",
                d.class, d.vendor, d.device, d.addr
            ),
        );
        Self::write(&dir.join("config"), Self::bars_and_config(&dir, d));
        if let Some(g) = d.iommu_group {
            let gdir = self.root.join(format!("kernel/iommu_groups/{g}/devices"));
            fs::create_dir_all(&gdir).unwrap();
            let _ = std::os::unix::fs::symlink(&dir, gdir.join(&d.addr));
            std::os::unix::fs::symlink(
                format!("../../../kernel/iommu_groups/{g}"),
                dir.join("iommu_group"),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(&dir, self.root.join("bus/pci/devices").join(&d.addr)).unwrap();
        dir
    }
}

impl FakeSysfs {
    /// Writes `resource` (and a `resource<N>` file per BAR) into `dir`; returns the bytes of
    /// `config`, BAR registers included, cut as the device and reader make it.
    fn bars_and_config(dir: &Path, d: &Dev) -> Vec<u8> {
        let w = |name: &str, text: String| Self::write(&dir.join(name), text);
        // resource: BARs 0-5, the ROM, then bridge windows or SR-IOV BARs; 0x140204 is
        // IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_SIZEALIGN, as a 64-bit BAR shows.
        let mut lines = vec![(0u64, 0u64, 0u64); if d.class >> 8 == 0x0604 { 17 } else { 13 }];
        let mut cfg = match d.port_type {
            Some(pt) => ConfigImage::pcie(d.vendor, d.device, d.class, pt, d.acs),
            None => ConfigImage::pcie(d.vendor, d.device, d.class, 0, None),
        };
        let mut regs_used = std::collections::HashSet::new();
        for &(i, cpu, size) in &d.bars {
            // A 64-bit BAR takes its register and the next: catch fixtures that overlap them.
            let regs = if cpu + d.bus_offset > u64::from(u32::MAX) {
                2
            } else {
                1
            };
            for r in i..i + regs {
                assert!(
                    regs_used.insert(r),
                    "{}: BAR register {r} used twice",
                    d.addr
                );
            }
            lines[i as usize] = (cpu, cpu + size - 1, 0x0014_0204);
            cfg = cfg.with_bar(i, cpu + d.bus_offset);
            // The sysfs file a driver mmaps, as large as the BAR (sparse here).
            let f = fs::File::create(dir.join(format!("resource{i}"))).unwrap();
            f.set_len(size.min(1 << 40)).unwrap();
        }
        let text: String = lines
            .iter()
            .map(|(s, e, f)| format!("0x{s:016x} 0x{e:016x} 0x{f:016x}\n"))
            .collect();
        w("resource", text);
        let mut bytes = cfg.into_bytes();
        if d.port_type.is_none() {
            // Conventional PCI: no capability list, 256 bytes.
            bytes.truncate(256);
            bytes[0x06] = 0;
            bytes[0x34] = 0;
            bytes[0x40..0x44].fill(0);
        }
        if let Some(n) = d.config_readable {
            // What an unprivileged reader gets: the first 64 bytes (a plain file cannot keep the
            // kernel's size too, but any read under 256 bytes is short for every function).
            bytes.truncate(n);
        }
        bytes
    }

    /// Moves a host bridge directory below `devices/<under>` (where ARM SoCs and Hyper-V put
    /// them) and points the `bus/pci/devices` links of its functions there, relative as Linux
    /// writes them. Returns the new directory.
    pub fn move_host_bridge(&self, hb: &Path, under: &str) -> PathBuf {
        let name = hb.file_name().unwrap();
        let moved = self.root.join("devices").join(under).join(name);
        fs::create_dir_all(moved.parent().unwrap()).unwrap();
        fs::rename(hb, &moved).unwrap();
        let links = self.root.join("bus/pci/devices");
        for entry in fs::read_dir(&links).unwrap() {
            let link = entry.unwrap().path();
            let Ok(old) = fs::read_link(&link) else {
                continue;
            };
            let Ok(rest) = old.strip_prefix(hb) else {
                continue;
            };
            let rel = Path::new("../../../devices")
                .join(under)
                .join(name)
                .join(rest);
            fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(rel, &link).unwrap();
        }
        moved
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A 24-bit class code for a device class.
pub fn class_code(class: p2p_core::topology::DeviceClass) -> u32 {
    use p2p_core::topology::DeviceClass::*;
    match class {
        Gpu => 0x030200,
        Nic => 0x020700,
        Nvme => 0x010802,
        Accelerator => 0x120000,
        Other => 0x058000,
    }
}

/// Writes a whole topology as Linux would lay it out: port types in config, ACS capabilities,
/// BARs in `resource` (CPU) and in the BAR registers (bus), NUMA nodes and sockets, the host
/// bridge's allow-list entry as its first root port's device id, the CPU as its modalias.
pub fn write_topology(fs: &FakeSysfs, t: &p2p_core::topology::Topology) {
    use p2p_core::topology::HostBridgeP2p;
    if t.cpu_routes_p2p() {
        fs.cpu(2, 0x19, 0x11);
    } else {
        fs.cpu(0, 6, 0x55);
    }
    for (id, hb) in t.host_bridges() {
        fs.node(hb.numa, hb.numa * 4, 4, hb.socket);
        let dir = fs.host_bridge(hb.segment, hb.bus);
        let allow = match hb.p2p {
            HostBridgeP2p::None => 0x3456,
            HostBridgeP2p::SameBridge => 0x2f00,
            HostBridgeP2p::Any => 0x2030,
        };
        for (i, &c) in t.children(id).iter().enumerate() {
            write_node(fs, t, c, &dir, hb.numa, if i == 0 { allow } else { 0x3456 });
        }
    }
}

fn write_node(
    fs: &FakeSysfs,
    t: &p2p_core::topology::Topology,
    id: p2p_core::topology::NodeId,
    parent: &Path,
    numa: u32,
    device_id: u16,
) {
    use p2p_core::topology::NodeKind;
    let n = t.node(id);
    let addr = n.addr.unwrap().to_string();
    let mut dev = match &n.kind {
        NodeKind::RootPort => Dev::port(&addr, 0x8086, device_id, 4),
        NodeKind::SwitchUpstream => Dev::port(&addr, 0x10b5, 0x8747, 5),
        NodeKind::SwitchDownstream => Dev::port(&addr, 0x10b5, 0x8747, 6),
        NodeKind::Bridge => Dev::port(&addr, 0x1b21, 0x1080, 7),
        NodeKind::Endpoint(e) => {
            let mut d = Dev::endpoint(&addr, 0x1d0f, 0xefa1, class_code(e.class));
            for b in &e.bars {
                d = d.bar(b.index, b.cpu.0, b.size);
                d.bus_offset = b.bus_offset();
            }
            d
        }
        NodeKind::HostBridge(_) => unreachable!("host bridges are directories"),
    };
    if !n.acs.is_empty() {
        dev = dev.acs(0x7f, n.acs);
    }
    let dir = fs.device(parent, &dev.numa(numa as i32));
    for &c in t.children(id) {
        write_node(fs, t, c, &dir, numa, 0);
    }
}
