//! Identity DMA through the negotiator: bus addresses (with the host bridge's window offset),
//! DMA masks that force a bounce or a refusal, and the identity domain's contract.

use backend_passthrough::{BarExporter, IdentityDomain, PassthroughPlatform};
use p2p_core::prelude::*;
use p2p_core::testing::{TestHostMemory, TestImporter};
use p2p_core::topology::{Bar, DeviceClass, HostBridgeAt, HostBridgeP2p};
use p2p_core::traits::{DomainKind, IommuDomain};
use std::sync::Arc;

const GPU_CPU: u64 = 0x38_0000_0000;
/// The bus address the host bridge gives the GPU's BAR: CPU address minus 0x30_0000_0000.
const GPU_BUS: u64 = 0x8_0000_0000;

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

/// A GPU and a NIC below one switch, a second NIC on its own root port, all on one allow-listed
/// host bridge whose window is offset.
fn machine() -> Topology {
    let mut b = TopologyBuilder::new();
    let hb = b
        .host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::Any))
        .unwrap();
    let rp = b.root_port(hb, a("00:01.0")).unwrap();
    let sw = b.switch(rp, a("01:00.0")).unwrap();
    let d0 = b.downstream_port(sw, a("02:00.0")).unwrap();
    let d1 = b.downstream_port(sw, a("02:01.0")).unwrap();
    let bar = Bar {
        index: 1,
        cpu: PhysAddr(GPU_CPU),
        bus: BusAddr(GPU_BUS),
        size: 1 << 30,
    };
    b.endpoint(d0, a("03:00.0"), DeviceClass::Gpu, vec![bar])
        .unwrap();
    b.endpoint(d1, a("04:00.0"), DeviceClass::Nic, vec![])
        .unwrap();
    let rp2 = b.root_port(hb, a("00:02.0")).unwrap();
    b.endpoint(rp2, a("05:00.0"), DeviceClass::Nic, vec![])
        .unwrap();
    b.build().unwrap()
}

fn setup(mask_bits: u32, nic: &str) -> (Negotiator, Arc<dyn MemoryExporter>, Arc<dyn DmaImporter>) {
    let topo = machine();
    let bar: Arc<dyn MemoryExporter> = Arc::new(BarExporter::new(&topo, a("03:00.0"), 1).unwrap());
    // 3 GiB of "RAM" whose top 64 MiB serve bounce buffers: all below 4 GiB.
    let host = Arc::new(TestHostMemory::new(3 << 30, 64 << 20));
    let platform = Arc::new(PassthroughPlatform::new(topo, host));
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P | ImporterFlags::ODP,
        dma_mask: dma_mask(mask_bits),
        max_segment: 0,
    };
    let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(a(nic), caps));
    (Negotiator::new(platform), bar, importer)
}

fn range(off: u64, len: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(off), len).unwrap()
}

#[test]
fn peers_get_bus_addresses_not_cpu_addresses() {
    let rw = Access::READ | Access::WRITE;
    // Same switch: the switch turns the request around.
    let (n, bar, nic) = setup(64, "04:00.0");
    let m = n
        .map(&bar, &nic, range(0x2000, 0x3000), rw, &Policy::default())
        .unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Direct);
    let segs = m.segments().unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].addr.0, segs[0].len), (GPU_BUS + 0x2000, 0x3000));
    // Another root port: through the host bridge, untranslated.
    let (n, bar, nic) = setup(64, "05:00.0");
    let m = n
        .map(&bar, &nic, range(0, 0x1000), rw, &Policy::default())
        .unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Identity);
    assert_eq!(m.segments().unwrap()[0].addr.0, GPU_BUS);
    assert_eq!(
        m.iova().unwrap(),
        None,
        "nothing is mapped in an identity domain"
    );
}

#[test]
fn an_address_above_the_mask_bounces_or_is_refused() {
    let rw = Access::READ | Access::WRITE;
    let (n, bar, nic) = setup(32, "05:00.0");
    let bounce = Policy {
        fallback: Fallback::Bounce,
        ..Policy::default()
    };
    let plan = n.negotiate(&*bar, &*nic, rw, &bounce).unwrap();
    assert_eq!(plan.strategy, Strategy::Bounce);
    let top = GPU_BUS + (1 << 30) - 1;
    assert!(plan.reasons.contains(&Reason::MaskTooSmall {
        top,
        mask: dma_mask(32)
    }));
    let m = n.establish(&plan, &bar, &nic, range(0, 0x4000)).unwrap();
    let seg = m.segments().unwrap()[0];
    assert!(
        seg.addr.0 + seg.len - 1 <= dma_mask(32),
        "the bounce buffer is reachable"
    );

    let plan = n.negotiate(&*bar, &*nic, rw, &Policy::default()).unwrap();
    assert_eq!(
        plan.strategy,
        Strategy::Refused(Reason::MaskTooSmall {
            top,
            mask: dma_mask(32)
        })
    );
    assert!(n.establish(&plan, &bar, &nic, range(0, 0x1000)).is_err());
    // A 36-bit device reaches the BAR's bus address (but not its CPU address): no bounce.
    let (n, bar, nic) = setup(36, "05:00.0");
    assert_eq!(
        n.negotiate(&*bar, &*nic, rw, &Policy::default())
            .unwrap()
            .strategy,
        Strategy::Identity
    );
}

#[test]
fn the_identity_domain_maps_nothing_and_translates_everything_but_msi() {
    let d = IdentityDomain::new();
    assert_eq!(d.kind(), DomainKind::Identity);
    let t = d.translate(Iova(0x1234_5000)).unwrap();
    assert_eq!(t.phys.0, 0x1234_5000);
    assert!(
        d.translate(Iova(0xfee0_0000)).is_none(),
        "MSI doorbells are not memory"
    );
    assert!(matches!(
        d.map(Iova(0), PhysAddr(0), 0x1000, Access::READ),
        Err(Error::WrongDomainKind { op: "map", .. })
    ));
    assert!(d.unmap(Iova(0), 0x1000).is_err());
    assert!(d.alloc_iova(0x1000, u64::MAX).is_err());
    d.flush().unwrap();
}

#[test]
fn bar_exporter_rejects_what_the_bar_cannot_hold() {
    let topo = machine();
    assert!(BarExporter::new(&topo, a("03:00.0"), 0)
        .unwrap_err()
        .to_string()
        .contains("BAR0"));
    assert!(matches!(
        BarExporter::new(&topo, a("09:00.0"), 1),
        Err(Error::UnknownDevice(_))
    ));
    assert!(matches!(
        BarExporter::new(&topo, a("02:00.0"), 1),
        Err(Error::NotAnEndpoint(_))
    ));
    let bar = BarExporter::new(&topo, a("03:00.0"), 1).unwrap();
    assert!(matches!(
        bar.export(range(1 << 30, 0x1000), false),
        Err(Error::OutOfBounds { .. })
    ));
    let g = bar.allocate(0x1800, true).unwrap();
    let c = bar.chunks(&g).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].bus.0.wrapping_sub(c[0].phys.0),
        GPU_BUS.wrapping_sub(GPU_CPU)
    );
    assert!(c[0].mmio && c[0].len == 0x2000);
    bar.release(&g).unwrap();
    assert!(matches!(bar.release(&g), Err(Error::UnknownGrant { .. })));
    assert!(matches!(
        bar.allocate(2 << 30, false),
        Err(Error::WindowFull { .. })
    ));
}

#[test]
fn this_machine_as_a_passthrough_platform() {
    let host = Arc::new(TestHostMemory::new(1 << 30, 1 << 20));
    let (p, scan) = PassthroughPlatform::from_sysfs(std::path::Path::new("/sys"), host).unwrap();
    for d in &scan.devices {
        match p.domain(d.addr) {
            Ok(dom) => assert_eq!(dom.kind(), DomainKind::Identity),
            Err(e) => assert!(
                d.iommu_group.is_some() && e.to_string().contains("VFIO"),
                "{e}"
            ),
        }
        if let Some(bits) = d.dma_mask_bits {
            assert_eq!(p.dma_mask(d.addr), Some(dma_mask(bits)));
        }
    }
    assert!(matches!(
        p.domain(a("7f:1f.7")),
        Err(Error::UnknownDevice(_))
    ));
}
