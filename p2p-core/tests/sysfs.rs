//! Topologies read from sysfs trees written the way Linux writes them.

mod fake_sysfs;

use fake_sysfs::{write_topology, Dev, FakeSysfs};
use p2p_core::topology::sysfs::{self, AcsState, PortType};
use p2p_core::topology::{
    presets, AcsFlags, DeviceClass, HostBridgeP2p, NodeKind, PathClass, Route, Topology,
};
use p2p_core::{Error, PciAddr};

const INTEL: u16 = 0x8086;
const NVIDIA: u16 = 0x10de;
const MELLANOX: u16 = 0x15b3;
const BROADCOM: u16 = 0x1000;
const SAMSUNG: u16 = 0x144d;
const GPU: u32 = 0x030200;
const IB: u32 = 0x020700;
const NVME: u32 = 0x010802;

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

/// One socket's PCIe tree on host bridge `pci0000:<bus>`: a Skylake-SP root port (8086:2030)
/// holding a Broadcom PEX switch with two GPUs and a ConnectX NIC, and a second root port with
/// an NVMe drive. `acs` is what the switch's downstream ports have on.
#[allow(clippy::too_many_arguments)]
fn socket(
    fs: &FakeSysfs,
    numa: i32,
    addrs: [&'static str; 10],
    bar_base: u64,
    acs: AcsFlags,
    group_base: u32,
) {
    let [rp, up, d0, d1, d2, g0, g1, nic, rp2, nvme] = addrs;
    let hb = fs.host_bridge(0, a(rp).bus);
    let rp_dir = fs.device(
        &hb,
        &Dev::port(rp, INTEL, 0x2030, 4)
            .acs(0x1f, AcsFlags::LINUX_ISOLATION)
            .numa(numa)
            .group(group_base),
    );
    let up_dir = fs.device(
        &rp_dir,
        &Dev::port(up, BROADCOM, 0xc010, 5)
            .numa(numa)
            .group(group_base + 1),
    );
    for (i, (port, ep, dev)) in [
        (d0, g0, Dev::endpoint(g0, NVIDIA, 0x20b0, GPU).mask(47)),
        (d1, g1, Dev::endpoint(g1, NVIDIA, 0x20b0, GPU).mask(47)),
        (d2, nic, Dev::endpoint(nic, MELLANOX, 0x101b, IB)),
    ]
    .into_iter()
    .enumerate()
    {
        let port_dir = fs.device(
            &up_dir,
            &Dev::port(port, BROADCOM, 0xc010, 6)
                .acs(0x5f, acs)
                .numa(numa)
                .group(group_base + 2 + i as u32),
        );
        let base = bar_base + (i as u64) * 0x20_0000_0000;
        // Below 4 GiB: the GPUs' 32-bit register BAR0, in the socket's low window.
        let low = 0xc000_0000 + u64::from(a(rp).bus) * 0x10_0000 + (i as u64) * 0x100_0000 / 16;
        let dev = if ep == nic {
            dev.bar(0, base, 0x200_0000)
        } else {
            // BAR1 and BAR3 are 64-bit: each takes two registers.
            dev.bar(0, low, 0x10_0000)
                .bar(1, base + 0x10_0000_0000, 0x10_0000_0000)
                .bar(3, base + 0x1000_0000, 0x200_0000)
        };
        fs.device(&port_dir, &dev.numa(numa).group(group_base + 10 + i as u32));
    }
    let rp2_dir = fs.device(
        &hb,
        &Dev::port(rp2, INTEL, 0x2032, 4)
            .acs(0x1f, AcsFlags::LINUX_ISOLATION)
            .numa(numa)
            .group(group_base + 20),
    );
    fs.device(
        &rp2_dir,
        &Dev::endpoint(nvme, SAMSUNG, 0xa80a, NVME)
            .bar(0, bar_base + 0x80_0000_0000, 0x4000)
            .numa(numa)
            .group(group_base + 21),
    );
}

fn two_socket_server(name: &str, acs: AcsFlags) -> FakeSysfs {
    let fs = FakeSysfs::new(name);
    fs.cpu(0, 6, 85).node(0, 0, 16, 0).node(1, 16, 16, 1);
    socket(
        &fs,
        0,
        [
            "0000:17:00.0",
            "0000:18:00.0",
            "0000:19:00.0",
            "0000:19:08.0",
            "0000:19:10.0",
            "0000:1a:00.0",
            "0000:1b:00.0",
            "0000:1c:00.0",
            "0000:17:02.0",
            "0000:1d:00.0",
        ],
        0x200_0000_0000,
        acs,
        10,
    );
    socket(
        &fs,
        1,
        [
            "0000:85:00.0",
            "0000:86:00.0",
            "0000:87:00.0",
            "0000:87:08.0",
            "0000:87:10.0",
            "0000:88:00.0",
            "0000:89:00.0",
            "0000:8a:00.0",
            "0000:85:02.0",
            "0000:8b:00.0",
        ],
        0x400_0000_0000,
        acs,
        60,
    );
    fs
}

#[test]
fn two_socket_server_with_switches() {
    let fs = two_socket_server("server", AcsFlags::empty());
    let scan = sysfs::scan(&fs.root).unwrap();
    let t = &scan.topology;
    assert!(scan.notes.is_empty(), "{:?}", scan.notes);
    assert!(
        !t.cpu_routes_p2p(),
        "an Intel CPU does not route P2P by itself"
    );

    // Host bridges: one per socket, NUMA and socket from sysfs, Skylake-SP on the allow-list.
    let hbs: Vec<_> = t.host_bridges().map(|(_, h)| h.clone()).collect();
    assert_eq!(hbs.len(), 2);
    assert_eq!(
        (hbs[0].name.as_str(), hbs[0].numa, hbs[0].socket),
        ("pci0000:17", 0, 0)
    );
    assert_eq!(
        (hbs[1].name.as_str(), hbs[1].numa, hbs[1].socket),
        ("pci0000:85", 1, 1)
    );
    assert!(hbs.iter().all(|h| h.p2p == HostBridgeP2p::Any));

    // Ports recognised from their PCIe port type.
    let kind = |s: &str| t.node(t.lookup(a(s)).unwrap()).kind.clone();
    assert_eq!(kind("17:00.0"), NodeKind::RootPort);
    assert_eq!(kind("18:00.0"), NodeKind::SwitchUpstream);
    assert_eq!(kind("19:08.0"), NodeKind::SwitchDownstream);

    // Classes and BARs.
    let classes: Vec<(PciAddr, DeviceClass)> = t.endpoints().map(|(a, e)| (a, e.class)).collect();
    assert_eq!(classes.len(), 8);
    assert_eq!(t.endpoint(a("1a:00.0")).unwrap().class, DeviceClass::Gpu);
    assert_eq!(t.endpoint(a("1c:00.0")).unwrap().class, DeviceClass::Nic);
    assert_eq!(t.endpoint(a("1d:00.0")).unwrap().class, DeviceClass::Nvme);
    let gpu = t.endpoint(a("1a:00.0")).unwrap();
    let bar1 = gpu.bars.iter().find(|b| b.index == 1).unwrap();
    assert_eq!((bar1.cpu.0, bar1.size), (0x210_0000_0000, 0x10_0000_0000));
    assert_eq!(bar1.bus.0, bar1.cpu.0);

    // Facts kept beside the tree.
    let g = scan.device(a("1a:00.0")).unwrap();
    assert_eq!((g.vendor, g.device, g.class_code), (NVIDIA, 0x20b0, GPU));
    assert_eq!(
        (g.numa_node, g.dma_mask_bits, g.iommu_group),
        (Some(0), Some(47), Some(20))
    );
    assert_eq!(g.port_type, Some(PortType::Endpoint));
    let d = scan.device(a("19:00.0")).unwrap();
    assert_eq!(
        d.acs,
        AcsState::Present {
            capability: 0x5f,
            control: AcsFlags::empty()
        }
    );

    // Routes.
    let check = |x: &str, y: &str, class: PathClass, route: Route| {
        let p = t.path(a(x), a(y)).unwrap();
        assert_eq!((p.class, &p.route), (class, &route), "{x} -> {y}");
    };
    check("1a:00.0", "1b:00.0", PathClass::Pix, Route::BusAddr);
    check("1a:00.0", "1c:00.0", PathClass::Pix, Route::BusAddr);
    check(
        "1a:00.0",
        "1d:00.0",
        PathClass::Phb,
        Route::ThroughHostBridge,
    );
    check(
        "1a:00.0",
        "8a:00.0",
        PathClass::Sys,
        Route::ThroughHostBridge,
    );
    assert_eq!(t.path(a("1a:00.0"), a("1b:00.0")).unwrap().distance, 4);
}

#[test]
fn switch_with_acs_redirect() {
    // What Linux turns on when an IOMMU is active: SV, RR, CR, UF on every downstream port.
    let fs = two_socket_server("acs", AcsFlags::LINUX_ISOLATION);
    let t = sysfs::read_topology(&fs.root).unwrap();
    let p = t.path(a("1a:00.0"), a("1c:00.0")).unwrap();
    assert_eq!(p.class, PathClass::Pix, "the class is about wires, not ACS");
    assert_eq!(p.route, Route::ThroughHostBridge);
    assert_eq!(p.acs_redirect, vec![a("19:00.0"), a("19:10.0")]);
    let node = t.node(t.lookup(a("19:08.0")).unwrap());
    assert_eq!(node.acs, AcsFlags::LINUX_ISOLATION);
}

#[test]
fn device_behind_a_root_port_and_what_cannot_be_known() {
    let fs = FakeSysfs::new("rootport");
    // An AMD Zen 4 desktop: the CPU routes P2P; no NUMA information (-1).
    fs.cpu(2, 0x19, 0x61);
    let hb = fs.host_bridge(0, 0);
    fs.device(
        &hb,
        &Dev::endpoint("0000:00:00.0", 0x1022, 0x14d8, 0x060000),
    );
    let rp = fs.device(&hb, &Dev::port("0000:00:01.1", 0x1022, 0x14db, 4));
    fs.device(
        &rp,
        &Dev::endpoint("0000:01:00.0", SAMSUNG, 0xa80c, NVME).bar(0, 0xfcf0_0000, 0x4000),
    );
    // A root port whose config an unprivileged reader sees only 64 bytes of.
    let rp2 = fs.device(
        &hb,
        &Dev {
            config_readable: Some(64),
            ..Dev::port("0000:00:01.2", 0x1022, 0x14db, 4)
        },
    );
    // A PCIe-to-PCI bridge with a conventional device whose BAR the host bridge offsets.
    let pci_bridge = fs.device(&rp2, &Dev::port("0000:02:00.0", 0x1b21, 0x1080, 7));
    fs.device(
        &pci_bridge,
        &Dev {
            port_type: None,
            bus_offset: 0x1_0000_0000,
            ..Dev::endpoint("0000:03:00.0", 0x1102, 0x0004, 0x040100).bar(0, 0xfc00_0000, 0x4000)
        },
    );
    let scan = sysfs::scan(&fs.root).unwrap();
    let t = &scan.topology;
    assert!(t.cpu_routes_p2p());
    let kind = |s: &str| t.node(t.lookup(a(s)).unwrap()).kind.clone();
    assert_eq!(kind("00:01.1"), NodeKind::RootPort);
    // Its port type is unknown: a bridge on the root bus is a root port, and that is said.
    assert_eq!(kind("00:01.2"), NodeKind::RootPort);
    assert!(scan
        .notes
        .iter()
        .any(|n| n.contains("0000:00:01.2") && n.contains("inferred from the tree")));
    assert_eq!(kind("02:00.0"), NodeKind::Bridge);
    assert_eq!(t.endpoint(a("00:00.0")).unwrap().class, DeviceClass::Other);
    assert_eq!(t.endpoint(a("01:00.0")).unwrap().class, DeviceClass::Nvme);

    // The short config: ACS unknown, and said so.
    assert_eq!(scan.device(a("00:01.2")).unwrap().acs, AcsState::Unknown);
    assert!(scan
        .notes
        .iter()
        .any(|n| n.contains("0000:00:01.2") && n.contains("ACS unknown")));
    // Conventional PCI: no ACS at all.
    assert_eq!(scan.device(a("03:00.0")).unwrap().acs, AcsState::Absent);
    assert_eq!(scan.device(a("03:00.0")).unwrap().port_type, None);
    assert!(scan.notes.iter().any(|n| n.contains("node 0 assumed")));
    // The offset window: bus address from the BAR register.
    let bar = t.endpoint(a("03:00.0")).unwrap().bars[0];
    assert_eq!(
        (bar.cpu.0, bar.bus.0, bar.bus_offset()),
        (0xfc00_0000, 0x1_fc00_0000, 0x1_0000_0000)
    );
    // Behind different root ports of one host bridge: PHB, routed by the Zen CPU.
    let p = t.path(a("01:00.0"), a("03:00.0")).unwrap();
    assert_eq!(
        (p.class, p.route),
        (PathClass::Phb, Route::ThroughHostBridge)
    );
}

#[test]
fn bad_files_name_their_path_and_missing_optional_ones_do_not_matter() {
    let fs = FakeSysfs::new("bad");
    let hb = fs.host_bridge(0, 0);
    let dev = fs.device(
        &hb,
        &Dev::endpoint("0000:00:02.0", INTEL, 0x4680, 0x030000).bar(0, 0x6000_0000, 0x100_0000),
    );
    for optional in ["numa_node", "dma_mask_bits", "local_cpulist", "modalias"] {
        std::fs::remove_file(dev.join(optional)).unwrap();
    }
    let scan = sysfs::scan(&fs.root).unwrap();
    let d = scan.device(a("00:02.0")).unwrap();
    assert_eq!(
        (d.numa_node, d.dma_mask_bits, d.iommu_group),
        (None, None, None)
    );

    let expect = |file: &str, contents: &str, words: &[&str]| {
        let path = dev.join(file);
        let saved = std::fs::read(&path).ok();
        std::fs::write(&path, contents).unwrap();
        let err = sysfs::scan(&fs.root).unwrap_err();
        assert!(matches!(err, Error::Sysfs { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for w in words {
            assert!(msg.contains(w), "{file}: {msg}");
        }
        match saved {
            Some(b) => std::fs::write(&path, b).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    };
    expect("class", "display\n", &["not a 0x-prefixed hex number"]);
    expect("vendor", "0x123456\n", &["16 bits"]);
    expect("numa_node", "zero\n", &["not a number"]);
    expect("dma_mask_bits", "65\n", &["mask width"]);
    expect("resource", "0x1000 0x2000\n", &["line 1"]);
    expect(
        "resource",
        "0x0000000000002000 0x0000000000001000 0x0000000000000200\n",
        &["lies before"],
    );

    // A required file that is missing.
    std::fs::remove_file(dev.join("vendor")).unwrap();
    let msg = sysfs::scan(&fs.root).unwrap_err().to_string();
    assert!(
        msg.contains("vendor") && msg.contains("cannot read"),
        "{msg}"
    );

    // No sysfs at all.
    let msg = sysfs::scan(&fs.root.join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nowhere") && msg.contains("cannot list"),
        "{msg}"
    );
}

/// A topology in a comparable form: every node with its kind (endpoint class and BARs, not the
/// generated name), address, parent's address, ACS and depth; host bridges with their facts.
fn canonical(t: &Topology) -> Vec<String> {
    let mut v: Vec<String> = t
        .node_ids()
        .map(|i| {
            let n = t.node(i);
            let kind = match &n.kind {
                NodeKind::Endpoint(e) => format!("endpoint {} {:?}", e.class, e.bars),
                NodeKind::HostBridge(h) => {
                    format!(
                        "hb {} {} {} {} {} {:?}",
                        h.name, h.segment, h.bus, h.numa, h.socket, h.p2p
                    )
                }
                other => format!("{other:?}"),
            };
            let parent = n.parent.map(|p| t.node(p).addr);
            format!("{kind} {:?} {parent:?} {:?} {}", n.addr, n.acs, n.depth)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn random_machines_survive_a_round_trip_through_sysfs() {
    for seed in 0..32 {
        let t = presets::random(seed).unwrap();
        let fs = FakeSysfs::new(&format!("random{seed}"));
        write_topology(&fs, &t);
        let back = sysfs::scan(&fs.root).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(back.notes.is_empty(), "seed {seed}: {:?}", back.notes);
        let b = &back.topology;
        assert_eq!(canonical(&t), canonical(b), "seed {seed}");
        assert_eq!(t.cpu_routes_p2p(), b.cpu_routes_p2p(), "seed {seed}");
        let eps: Vec<PciAddr> = t.endpoints().map(|(a, _)| a).collect();
        for &x in &eps {
            for &y in &eps {
                assert_eq!(
                    t.path(x, y).unwrap(),
                    b.path(x, y).unwrap(),
                    "seed {seed}: {x} -> {y}"
                );
            }
        }
    }
}

#[test]
fn the_host_bridge_is_identified_by_its_first_function_only() {
    // pci_host_bridge_dev(): the first device of the root bus, if at 00.0 or a root port.
    let fs = FakeSysfs::new("hbdev");
    let hb = fs.host_bridge(0, 0x40);
    fs.device(&hb, &Dev::endpoint("0000:40:00.1", INTEL, 0x0998, 0x088000));
    fs.device(&hb, &Dev::port("0000:40:01.0", INTEL, 0x2030, 4));
    let t = sysfs::read_topology(&fs.root).unwrap();
    assert_eq!(t.host_bridges().next().unwrap().1.p2p, HostBridgeP2p::None);
    // The same root port first on its bus identifies the bridge.
    let fs = FakeSysfs::new("hbdev2");
    let hb = fs.host_bridge(0, 0x40);
    fs.device(&hb, &Dev::port("0000:40:01.0", INTEL, 0x2030, 4));
    fs.device(&hb, &Dev::endpoint("0000:40:02.1", INTEL, 0x0998, 0x088000));
    let t = sysfs::read_topology(&fs.root).unwrap();
    assert_eq!(t.host_bridges().next().unwrap().1.p2p, HostBridgeP2p::Any);
}
