//! sysfs trees shaped as real servers show them to an unprivileged reader (issue 14): switches
//! whose port types cannot be read, NUMA nodes known only below the root bus, 32-bit PCI
//! domains, InfiniBand controllers of class 0x0c06, host bridges found through
//! `bus/pci/devices` links.

mod fake_sysfs;

use fake_sysfs::{Dev, FakeSysfs};
use p2p_core::topology::sysfs::{self, AcsState};
use p2p_core::topology::{DeviceClass, NodeKind, PathClass};
use p2p_core::{Error, PciAddr};
use std::path::Path;

const PLX: u16 = 0x10b5;
const NVIDIA: u16 = 0x10de;
const MELLANOX: u16 = 0x15b3;

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

/// What an unprivileged reader gets of `config`.
fn unprivileged(d: Dev) -> Dev {
    Dev {
        config_readable: Some(64),
        ..d
    }
}

/// A root port `rp` holding a PLX 10b5:9797 switch whose downstream ports hold `cards`
/// (address, class), every config 64 bytes. Returns nothing: the tree is on disk.
fn plx_switch(fs: &FakeSysfs, hb: &Path, rp: &str, up: &str, cards: &[(&str, &str, u32)]) {
    let rp = fs.device(hb, &unprivileged(Dev::port(rp, 0x8086, 0x2030, 4)));
    let up = fs.device(&rp, &unprivileged(Dev::port(up, PLX, 0x9797, 5)));
    for (down, card, class) in cards {
        let d = fs.device(&up, &unprivileged(Dev::port(down, PLX, 0x9797, 6)));
        let ep = Dev::endpoint(card, NVIDIA, 0x20b0, *class).numa(1);
        fs.device(&d, &unprivileged(ep));
    }
}

#[test]
fn switches_are_inferred_when_port_types_cannot_be_read() {
    let fs = FakeSysfs::new("plx");
    let hb = fs.host_bridge(0, 0);
    plx_switch(
        &fs,
        &hb,
        "0000:00:01.0",
        "0000:01:00.0",
        &[
            ("0000:02:08.0", "0000:03:00.0", 0x030200),
            ("0000:02:10.0", "0000:04:00.0", 0x030200),
            ("0000:02:18.0", "0000:05:00.0", 0x020700),
        ],
    );
    plx_switch(
        &fs,
        &hb,
        "0000:00:02.0",
        "0000:81:00.0",
        &[
            ("0000:82:08.0", "0000:83:00.0", 0x030200),
            ("0000:82:10.0", "0000:84:00.0", 0x030200),
        ],
    );
    let scan = sysfs::scan(&fs.root).unwrap();
    let t = &scan.topology;
    let kind = |s: &str| t.node(t.lookup(a(s)).unwrap()).kind.clone();
    assert_eq!(kind("00:01.0"), NodeKind::RootPort);
    assert_eq!(kind("01:00.0"), NodeKind::SwitchUpstream);
    assert_eq!(kind("02:10.0"), NodeKind::SwitchDownstream);
    // nvidia-smi says PIX here, unprivileged; each port counted as a bridge said PXB.
    for (x, y) in [
        ("03:00.0", "04:00.0"),
        ("03:00.0", "05:00.0"),
        ("83:00.0", "84:00.0"),
    ] {
        assert_eq!(t.path(a(x), a(y)).unwrap().class, PathClass::Pix, "{x} {y}");
    }
    assert_eq!(
        t.path(a("03:00.0"), a("83:00.0")).unwrap().class,
        PathClass::Phb
    );
    // Said once, and ACS still unknown.
    let inferred: Vec<&String> = scan
        .notes
        .iter()
        .filter(|n| n.contains("inferred from the tree"))
        .collect();
    assert_eq!(inferred.len(), 1, "{:?}", scan.notes);
    for part in [
        "root ports 0000:00:01.0, 0000:00:02.0",
        "switch upstream ports 0000:01:00.0, 0000:81:00.0",
        "switch downstream ports 0000:02:08.0, 0000:02:10.0, 0000:02:18.0, 0000:82:08.0",
    ] {
        assert!(inferred[0].contains(part), "{part}: {}", inferred[0]);
    }
    assert_eq!(scan.device(a("02:08.0")).unwrap().acs, AcsState::Unknown);
    // The NUMA node comes from the cards below: the root-bus ports say -1.
    assert_eq!(t.numa_of(a("03:00.0")).unwrap(), 1);
    assert!(!scan.notes.iter().any(|n| n.contains("node 0 assumed")));
}

#[test]
fn devices_below_a_host_bridge_give_its_numa_node_and_disagreements_are_said() {
    let fs = FakeSysfs::new("numa");
    fs.node(2, 0, 4, 1);
    let hb = fs.host_bridge(0, 0x40);
    let rp = fs.device(&hb, &Dev::port("0000:40:01.0", 0x8086, 0x2030, 4));
    fs.device(
        &rp,
        &Dev::endpoint("0000:41:00.0", NVIDIA, 0x20b0, 0x030200).numa(2),
    );
    fs.device(
        &rp,
        &Dev::endpoint("0000:41:00.1", NVIDIA, 0x20b0, 0x040300).numa(2),
    );
    let rp2 = fs.device(&hb, &Dev::port("0000:40:02.0", 0x8086, 0x2030, 4));
    fs.device(
        &rp2,
        &Dev::endpoint("0000:42:00.0", MELLANOX, 0x101b, 0x020700).numa(3),
    );
    let scan = sysfs::scan(&fs.root).unwrap();
    let (_, hb) = scan.topology.host_bridges().next().unwrap();
    assert_eq!((hb.numa, hb.socket), (2, 1));
    assert!(
        scan.notes
            .iter()
            .any(|n| n.contains("disagree") && n.contains("node 3 (1 devices)")),
        "{:?}",
        scan.notes
    );
}

#[test]
fn wide_domains_and_infiniband_class_are_read() {
    let fs = FakeSysfs::new("vmd");
    let hb = fs.host_bridge(0, 0);
    fs.device(
        &hb,
        &Dev::endpoint("0000:00:03.0", MELLANOX, 0x1003, 0x0c0600),
    );
    // A VMD domain: Linux numbers it 10000 and up, and puts its host bridge inside the VMD
    // controller's own directory, where only the bus/pci/devices links lead.
    let controller = fs.device(
        &hb,
        &Dev::endpoint("0000:00:0e.0", 0x8086, 0x467f, 0x010400),
    );
    let vmd = controller.join("pci10000:e0");
    std::fs::create_dir(&vmd).unwrap();
    let rp = fs.device(&vmd, &Dev::port("10000:e0:1d.0", 0x8086, 0x09ab, 4));
    fs.device(
        &rp,
        &Dev::endpoint("10000:e1:00.0", 0x144d, 0xa80a, 0x010802),
    );
    let t = sysfs::scan(&fs.root).unwrap().topology;
    assert_eq!(
        t.endpoint(a("0000:00:03.0")).unwrap().class,
        DeviceClass::Nic
    );
    assert_eq!(
        t.endpoint(a("10000:e1:00.0")).unwrap().class,
        DeviceClass::Nvme
    );
    assert_eq!(t.host_bridges().count(), 2);
}

/// One root port with an NVMe drive, written below `devices/<under>` with relative links in
/// `bus/pci/devices`, as Linux lays out ARM SoC and Hyper-V host bridges.
fn tree_under(name: &str, under: &str) -> FakeSysfs {
    let fs = FakeSysfs::new(name);
    let hb = fs.host_bridge(0, 0);
    let rp = fs.device(&hb, &Dev::port("0000:00:00.0", 0x1e0f, 0x0001, 4));
    fs.device(
        &rp,
        &Dev::endpoint("0000:01:00.0", 0x144d, 0xa80a, 0x010802),
    );
    fs.move_host_bridge(&hb, under);
    fs
}

#[test]
fn host_bridges_are_found_through_bus_pci_devices() {
    let fs = tree_under("arm", "platform/soc/1c00000.pcie");
    let t = sysfs::scan(&fs.root).unwrap().topology;
    assert_eq!(t.endpoint(a("01:00.0")).unwrap().class, DeviceClass::Nvme);

    // The links lead nowhere: the message names the directory that is missing.
    std::fs::remove_dir_all(fs.root.join("devices/platform")).unwrap();
    let err = sysfs::scan(&fs.root).unwrap_err();
    match &err {
        Error::Sysfs { path, message } => {
            assert!(
                path.ends_with("devices/platform/soc/1c00000.pcie/pci0000:00"),
                "{path}"
            );
            assert!(
                message.contains("missing") && message.contains("0000:00:00.0"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Copies instead of links: the hierarchy is gone, and the message says so.
    for dev in ["0000:00:00.0", "0000:01:00.0"] {
        let link = fs.root.join("bus/pci/devices").join(dev);
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir(&link).unwrap();
    }
    let err = sysfs::scan(&fs.root).unwrap_err().to_string();
    assert!(
        err.contains("copies") && err.contains("bus/pci/devices"),
        "{err}"
    );
}
