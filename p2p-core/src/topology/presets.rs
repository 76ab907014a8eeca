//! Built-in machines: the topologies `p2pctl --preset NAME` offers, and a seeded random generator
//! for property tests.

use super::{
    AcsFlags, Bar, DeviceClass, HostBridgeAt, HostBridgeP2p, NodeId, Topology, TopologyBuilder,
};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use crate::rand::SplitMix64;

/// Names and one-line descriptions of the presets.
pub const PRESETS: [(&str, &str); 3] = [
    (
        "dgx",
        "two-socket server, 8 GPUs and 8 NICs, one GPU and one NIC per PCIe switch, \
         two switches per host bridge, two host bridges per socket",
    ),
    (
        "workstation",
        "one PCIe switch with two GPUs, a NIC and an NVMe drive; a second NVMe on its own root port",
    ),
    (
        "acs-switch",
        "a switch whose downstream ports have ACS redirect on (as an IOMMU host sets them), \
         below a host bridge that routes P2P only between its own devices; a NIC on a second host bridge",
    ),
];

/// The preset with this name.
pub fn preset(name: &str) -> Result<Topology> {
    match name {
        "dgx" => dgx(),
        "workstation" => workstation(),
        "acs-switch" => acs_switch(),
        _ => Err(Error::UnknownPreset {
            name: name.to_owned(),
            known: PRESETS.map(|(n, _)| n).join(", "),
        }),
    }
}

fn pci(segment: u32, bus: u8, device: u8, function: u8) -> Result<PciAddr> {
    PciAddr::new(segment, bus, device, function)
}

const GPU_REGS: u64 = 16 << 20;
const GPU_VRAM: u64 = 32 << 30;
const NIC_REGS: u64 = 32 << 20;

/// A two-socket 8-GPU / 8-NIC server laid out as DGX-class machines are publicly documented:
/// every PCIe switch holds one GPU and one NIC.
pub fn dgx() -> Result<Topology> {
    let mut b = TopologyBuilder::new();
    let mut mmio = 0x200_0000_0000u64;
    let mut n = 0;
    for hb_index in 0..4u8 {
        let socket = u32::from(hb_index / 2);
        let base = hb_index * 0x40;
        let hb = b.host_bridge(
            &format!("pci0000:{base:02x}"),
            HostBridgeAt {
                bus: base,
                numa: socket,
                socket,
                ..HostBridgeAt::new(HostBridgeP2p::Any)
            },
        )?;
        for j in 0..2u8 {
            let rp = b.root_port(hb, pci(0, base, j + 1, 0)?)?;
            let bus = base + 1 + j * 0x10;
            let sw = b.switch(rp, pci(0, bus, 0, 0)?)?;
            let d_gpu = b.downstream_port(sw, pci(0, bus + 1, 0, 0)?)?;
            let d_nic = b.downstream_port(sw, pci(0, bus + 1, 1, 0)?)?;
            let gpu_bars = vec![
                Bar::identity(0, mmio, GPU_REGS),
                Bar::identity(2, mmio + GPU_VRAM, GPU_VRAM),
            ];
            mmio += 2 * GPU_VRAM;
            b.named_endpoint(
                d_gpu,
                pci(0, bus + 2, 0, 0)?,
                DeviceClass::Gpu,
                gpu_bars,
                format!("GPU{n}"),
            )?;
            b.named_endpoint(
                d_nic,
                pci(0, bus + 3, 0, 0)?,
                DeviceClass::Nic,
                vec![Bar::identity(0, mmio, NIC_REGS)],
                format!("NIC{n}"),
            )?;
            mmio += GPU_VRAM;
            n += 1;
        }
    }
    b.build()
}

/// The switch every single-switch preset shares: two GPUs, a NIC and an NVMe drive below one
/// root port. Returns the downstream ports.
fn one_switch(b: &mut TopologyBuilder, hb: NodeId) -> Result<Vec<NodeId>> {
    let rp = b.root_port(hb, pci(0, 0, 1, 0)?)?;
    let sw = b.switch(rp, pci(0, 1, 0, 0)?)?;
    let mut ports = Vec::new();
    let devices = [
        (DeviceClass::Gpu, 0x60_0000_0000u64, GPU_VRAM),
        (DeviceClass::Gpu, 0x70_0000_0000, GPU_VRAM),
        (DeviceClass::Nic, 0x80_0000_0000, NIC_REGS),
        (DeviceClass::Nvme, 0x80_1000_0000, 16 << 10),
    ];
    for (i, (class, at, size)) in devices.into_iter().enumerate() {
        let i = i as u8;
        let port = b.downstream_port(sw, pci(0, 2, i, 0)?)?;
        b.endpoint(
            port,
            pci(0, 3 + i, 0, 0)?,
            class,
            vec![Bar::identity(0, at, size)],
        )?;
        ports.push(port);
    }
    Ok(ports)
}

/// A workstation: one switch, no ACS, a host bridge that does not route P2P.
pub fn workstation() -> Result<Topology> {
    let mut b = TopologyBuilder::new();
    let hb = b.host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::None))?;
    one_switch(&mut b, hb)?;
    let rp = b.root_port(hb, pci(0, 0, 2, 0)?)?;
    b.endpoint(
        rp,
        pci(0, 0x10, 0, 0)?,
        DeviceClass::Nvme,
        vec![Bar::identity(0, 0x80_2000_0000, 16 << 10)],
    )?;
    b.build()
}

/// The workstation's switch on an IOMMU host: every downstream port has SV|RR|CR|UF, so peers
/// must go through the host bridge (an Intel Xeon E5 v3 that allows same-bridge P2P only).
pub fn acs_switch() -> Result<Topology> {
    let mut b = TopologyBuilder::new();
    let hb = b.host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::SameBridge))?;
    for port in one_switch(&mut b, hb)? {
        b.set_acs(port, AcsFlags::LINUX_ISOLATION)?;
    }
    let hb1 = b.host_bridge(
        "pci0000:80",
        HostBridgeAt {
            bus: 0x80,
            ..HostBridgeAt::new(HostBridgeP2p::SameBridge)
        },
    )?;
    let rp = b.root_port(hb1, pci(0, 0x80, 1, 0)?)?;
    b.set_acs(rp, AcsFlags::LINUX_ISOLATION)?;
    b.endpoint(
        rp,
        pci(0, 0x81, 0, 0)?,
        DeviceClass::Nic,
        vec![Bar::identity(0, 0x90_0000_0000, NIC_REGS)],
    )?;
    b.build()
}

/// A random but valid machine: 1–3 host bridges on 1–2 NUMA nodes, root ports, switches nested
/// up to three deep, endpoints (some multi-function) with one BAR each, random ACS bits and
/// allow-list entries. The same seed gives the same topology.
pub fn random(seed: u64) -> Result<Topology> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TopologyBuilder::new();
    b.cpu_routes_p2p(rng.below(4) == 0);
    let mut mmio = 0x100_0000_0000u64;
    let bridges = 1 + rng.below(3) as u32;
    for h in 0..bridges {
        let p2p = [
            HostBridgeP2p::None,
            HostBridgeP2p::SameBridge,
            HostBridgeP2p::Any,
        ][rng.below(3) as usize];
        let numa = rng.below(2) as u32;
        let hb = b.host_bridge(
            &format!("pci{h:04x}:00"),
            HostBridgeAt {
                segment: h,
                numa,
                socket: numa,
                ..HostBridgeAt::new(p2p)
            },
        )?;
        // Bus numbers are handed out in order within the bridge's segment.
        let mut bus = 1u8;
        let mut ports: Vec<NodeId> = Vec::new();
        for dev in 0..1 + rng.below(3) as u8 {
            let rp = b.root_port(hb, pci(h, 0, dev + 1, 0)?)?;
            ports.push(rp);
        }
        let mut i = 0;
        while i < ports.len() && bus < 0xf0 {
            let port = ports[i];
            i += 1;
            if rng.below(3) == 0 {
                b.set_acs(port, AcsFlags::from_bits_truncate(rng.below(0x80) as u16))?;
            }
            let depth = b.depth_of(port);
            if depth < 6 && rng.below(2) == 0 {
                let up = b.switch(port, pci(h, bus, 0, 0)?)?;
                bus += 1;
                let down_bus = bus;
                bus += 1;
                for d in 0..1 + rng.below(3) as u8 {
                    ports.push(b.downstream_port(up, pci(h, down_bus, d, 0)?)?);
                }
            } else {
                let functions = if rng.below(4) == 0 { 2 } else { 1 };
                for f in 0..functions {
                    let class = [
                        DeviceClass::Gpu,
                        DeviceClass::Nic,
                        DeviceClass::Nvme,
                        DeviceClass::Other,
                    ][rng.below(4) as usize];
                    let ep = b.endpoint(
                        port,
                        pci(h, bus, 0, f)?,
                        class,
                        vec![Bar::identity(0, mmio, 1 << 20)],
                    )?;
                    mmio += 1 << 20;
                    if rng.below(4) == 0 {
                        b.set_acs(ep, AcsFlags::RR)?;
                    }
                }
                bus += 1;
            }
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_build() {
        for (name, _) in PRESETS {
            let t = preset(name).unwrap();
            assert!(t.endpoints().count() >= 4, "{name}");
        }
        assert_eq!(dgx().unwrap().endpoints().count(), 16);
        assert!(matches!(preset("nope"), Err(Error::UnknownPreset { .. })));
    }

    #[test]
    fn random_is_deterministic() {
        for seed in 0..50 {
            let a = random(seed).unwrap();
            let b = random(seed).unwrap();
            let ea: Vec<_> = a.endpoints().map(|(a, e)| (a, e.clone())).collect();
            let eb: Vec<_> = b.endpoints().map(|(a, e)| (a, e.clone())).collect();
            assert_eq!(ea, eb, "seed {seed}");
        }
    }
}
