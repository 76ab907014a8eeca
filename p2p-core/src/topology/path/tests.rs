use super::super::presets::{self, random};
use super::super::{
    AcsFlags, Bar, DeviceClass, HostBridgeAt, HostBridgeP2p, NodeId, TopologyBuilder,
};
use super::*;
use crate::error::Error;
use proptest::prelude::*;

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

/// One switch with three downstream ports (GPU, NIC, and a nested switch holding a NIC), plus a
/// multi-function device on a second root port.
struct Rig {
    b: TopologyBuilder,
    hb: NodeId,
    down: [NodeId; 3],
    up: NodeId,
    rp: NodeId,
}

fn rig(p2p: HostBridgeP2p) -> Rig {
    let mut b = TopologyBuilder::new();
    let hb = b.host_bridge("hb0", HostBridgeAt::new(p2p)).unwrap();
    let rp = b.root_port(hb, a("00:01.0")).unwrap();
    let up = b.switch(rp, a("01:00.0")).unwrap();
    let d0 = b.downstream_port(up, a("02:00.0")).unwrap();
    let d1 = b.downstream_port(up, a("02:01.0")).unwrap();
    let d2 = b.downstream_port(up, a("02:02.0")).unwrap();
    b.endpoint(
        d0,
        a("03:00.0"),
        DeviceClass::Gpu,
        vec![Bar::identity(0, 1 << 40, 1 << 30)],
    )
    .unwrap();
    b.endpoint(d1, a("04:00.0"), DeviceClass::Nic, vec![])
        .unwrap();
    let up2 = b.switch(d2, a("05:00.0")).unwrap();
    let d20 = b.downstream_port(up2, a("06:00.0")).unwrap();
    b.endpoint(d20, a("07:00.0"), DeviceClass::Nic, vec![])
        .unwrap();
    let rp2 = b.root_port(hb, a("00:02.0")).unwrap();
    b.endpoint(rp2, a("10:00.0"), DeviceClass::Nvme, vec![])
        .unwrap();
    b.endpoint(rp2, a("10:00.1"), DeviceClass::Nvme, vec![])
        .unwrap();
    Rig {
        b,
        hb,
        down: [d0, d1, d2],
        up,
        rp,
    }
}

const GPU: &str = "03:00.0";
const NIC: &str = "04:00.0";
const NIC_DEEP: &str = "07:00.0";
const NVME0: &str = "10:00.0";
const NVME1: &str = "10:00.1";

fn path(t: &Topology, x: &str, y: &str) -> PathInfo {
    t.path(a(x), a(y)).unwrap()
}

#[test]
fn distances_follow_linux() {
    let t = rig(HostBridgeP2p::None).b.build().unwrap();
    assert_eq!(path(&t, GPU, GPU).distance, 0);
    assert_eq!(
        path(&t, NVME0, NVME1).distance,
        2,
        "two functions of one device"
    );
    assert_eq!(
        path(&t, GPU, NIC).distance,
        4,
        "two devices under one switch"
    );
    assert_eq!(
        path(&t, GPU, NIC_DEEP).distance,
        6,
        "one more switch level adds 2"
    );
    // No common upstream bridge: full depths (GPU depth 4, NVMe depth 2).
    assert_eq!(path(&t, GPU, NVME0).distance, 6);
}

#[test]
fn classes_match_nvidia_smi() {
    let t = rig(HostBridgeP2p::None).b.build().unwrap();
    assert_eq!(path(&t, GPU, GPU).class, PathClass::Loc);
    assert_eq!(path(&t, GPU, NIC).class, PathClass::Pix);
    assert_eq!(path(&t, NVME0, NVME1).class, PathClass::Pix);
    assert_eq!(path(&t, GPU, NIC_DEEP).class, PathClass::Pxb);
    assert_eq!(path(&t, GPU, NVME0).class, PathClass::Phb);
    let dgx = presets::dgx().unwrap();
    let gpu = |n: usize| {
        dgx.endpoints()
            .filter(|(_, e)| e.class == DeviceClass::Gpu)
            .nth(n)
            .unwrap()
            .0
    };
    assert_eq!(dgx.path(gpu(0), gpu(1)).unwrap().class, PathClass::Phb);
    assert_eq!(dgx.path(gpu(0), gpu(2)).unwrap().class, PathClass::Node);
    assert_eq!(dgx.path(gpu(0), gpu(4)).unwrap().class, PathClass::Sys);
}

#[test]
fn switch_without_acs_routes_by_bus_address() {
    let t = rig(HostBridgeP2p::None).b.build().unwrap();
    let p = path(&t, GPU, NIC);
    assert_eq!(p.route, Route::BusAddr);
    assert!(p.acs_redirect.is_empty());
    assert_eq!(path(&t, GPU, NIC_DEEP).route, Route::BusAddr);
    assert_eq!(path(&t, GPU, GPU).route, Route::BusAddr);
}

#[test]
fn each_redirect_bit_forces_the_host_bridge() {
    for bit in [AcsFlags::RR, AcsFlags::CR, AcsFlags::EC] {
        let mut r = rig(HostBridgeP2p::SameBridge);
        r.b.set_acs(r.down[1], bit).unwrap();
        let t = r.b.build().unwrap();
        let p = path(&t, GPU, NIC);
        assert_eq!(p.route, Route::ThroughHostBridge, "{bit:?}");
        assert_eq!(p.acs_redirect, vec![a("02:01.0")]);
        assert_eq!(p.class, PathClass::Pix, "ACS does not change the class");
    }
}

#[test]
fn non_redirect_bits_do_not_matter() {
    let mut r = rig(HostBridgeP2p::None);
    for d in r.down {
        r.b.set_acs(d, AcsFlags::SV | AcsFlags::UF | AcsFlags::TB | AcsFlags::DT)
            .unwrap();
    }
    let t = r.b.build().unwrap();
    assert_eq!(path(&t, GPU, NIC).route, Route::BusAddr);
}

#[test]
fn redirect_at_the_common_bridge_counts_as_linux_does() {
    // Linux checks the provider's path including the common upstream bridge.
    let mut r = rig(HostBridgeP2p::None);
    r.b.set_acs(r.up, AcsFlags::RR).unwrap();
    let t = r.b.build().unwrap();
    let p = path(&t, GPU, NIC);
    assert_eq!(p.acs_redirect, vec![a("01:00.0")]);
    assert!(matches!(
        p.route,
        Route::Unsupported(Unsupported::HostBridgeNotAllowed { .. })
    ));
    // Ports above the common bridge are not on the path.
    let mut r = rig(HostBridgeP2p::None);
    r.b.set_acs(r.rp, AcsFlags::RR).unwrap();
    assert_eq!(path(&r.b.build().unwrap(), GPU, NIC).route, Route::BusAddr);
}

#[test]
fn redirect_on_an_endpoint_itself_counts() {
    let mut r = rig(HostBridgeP2p::Any);
    let t0 = r.b.build().unwrap();
    let nvme = t0.lookup(a(NVME1)).unwrap();
    r.b.set_acs(nvme, AcsFlags::RR).unwrap();
    let t = r.b.build().unwrap();
    assert_eq!(path(&t, NVME0, NVME1).route, Route::ThroughHostBridge);
}

#[test]
fn same_host_bridge_needs_the_allow_list() {
    let none = rig(HostBridgeP2p::None).b.build().unwrap();
    assert_eq!(
        path(&none, GPU, NVME0).route,
        Route::Unsupported(Unsupported::HostBridgeNotAllowed {
            bridge: "hb0".into()
        })
    );
    for ok in [HostBridgeP2p::SameBridge, HostBridgeP2p::Any] {
        let t = rig(ok).b.build().unwrap();
        assert_eq!(
            path(&t, GPU, NVME0).route,
            Route::ThroughHostBridge,
            "{ok:?}"
        );
    }
    let mut amd = rig(HostBridgeP2p::None).b;
    amd.cpu_routes_p2p(true);
    assert_eq!(
        path(&amd.build().unwrap(), GPU, NVME0).route,
        Route::ThroughHostBridge
    );
}

fn two_bridges(p0: HostBridgeP2p, p1: HostBridgeP2p, numa1: u32) -> TopologyBuilder {
    let mut b = TopologyBuilder::new();
    let h0 = b.host_bridge("hb0", HostBridgeAt::new(p0)).unwrap();
    let h1 = b
        .host_bridge(
            "hb1",
            HostBridgeAt {
                bus: 0x80,
                numa: numa1,
                socket: numa1,
                ..HostBridgeAt::new(p1)
            },
        )
        .unwrap();
    let r0 = b.root_port(h0, a("00:01.0")).unwrap();
    let r1 = b.root_port(h1, a("80:01.0")).unwrap();
    b.endpoint(r0, a("01:00.0"), DeviceClass::Gpu, vec![])
        .unwrap();
    b.endpoint(r1, a("81:00.0"), DeviceClass::Nic, vec![])
        .unwrap();
    b
}

#[test]
fn across_host_bridges_both_must_allow_it() {
    use HostBridgeP2p::*;
    for (p0, p1, ok) in [
        (Any, Any, true),
        (Any, SameBridge, false),
        (SameBridge, Any, false),
        (SameBridge, SameBridge, false),
        (None, Any, false),
    ] {
        let t = two_bridges(p0, p1, 0).build().unwrap();
        let p = t.path(a("01:00.0"), a("81:00.0")).unwrap();
        assert_eq!(p.class, PathClass::Node);
        assert_eq!(p.distance, 4);
        if ok {
            assert_eq!(p.route, Route::ThroughHostBridge);
        } else {
            assert!(
                matches!(
                    p.route,
                    Route::Unsupported(Unsupported::CrossHostBridge { .. })
                ),
                "{p0:?} {p1:?}"
            );
        }
    }
    let mut b = two_bridges(None, None, 1);
    b.cpu_routes_p2p(true);
    let p = b.build().unwrap().path(a("01:00.0"), a("81:00.0")).unwrap();
    assert_eq!(
        (p.class, p.route),
        (PathClass::Sys, Route::ThroughHostBridge)
    );
}

#[test]
fn only_endpoints_have_paths() {
    let r = rig(HostBridgeP2p::None);
    let t = r.b.build().unwrap();
    assert_eq!(
        t.path(a("02:00.0"), a(GPU)),
        Err(Error::NotAnEndpoint(a("02:00.0")))
    );
    assert_eq!(
        t.path(a(GPU), a("99:00.0")),
        Err(Error::UnknownDevice(a("99:00.0")))
    );
    let _ = r.hb;
}

#[test]
fn preset_routes() {
    let w = presets::workstation().unwrap();
    let acs = presets::acs_switch().unwrap();
    let (g0, g1) = (a("03:00.0"), a("04:00.0"));
    assert_eq!(w.path(g0, g1).unwrap().route, Route::BusAddr);
    assert_eq!(acs.path(g0, g1).unwrap().route, Route::ThroughHostBridge);
    assert!(matches!(
        acs.path(g0, a("81:00.0")).unwrap().route,
        Route::Unsupported(_)
    ));
}

fn all_pairs(t: &Topology) -> Vec<(PciAddr, PciAddr)> {
    let eps: Vec<PciAddr> = t.endpoints().map(|(a, _)| a).collect();
    eps.iter()
        .flat_map(|&x| eps.iter().map(move |&y| (x, y)))
        .collect()
}

proptest! {
    #[test]
    fn path_is_symmetric(seed: u64) {
        let t = random(seed).unwrap();
        for (x, y) in all_pairs(&t) {
            let (xy, yx) = (t.path(x, y).unwrap(), t.path(y, x).unwrap());
            prop_assert_eq!(xy.class, yx.class, "seed {} {} {}", seed, x, y);
            prop_assert_eq!(xy.distance, yx.distance, "seed {} {} {}", seed, x, y);
            prop_assert_eq!(&xy.route, &yx.route, "seed {} {} {}", seed, x, y);
            let (mut r1, mut r2) = (xy.acs_redirect.clone(), yx.acs_redirect.clone());
            r1.sort();
            r2.sort();
            prop_assert_eq!(r1, r2);
        }
    }

    #[test]
    fn loc_iff_same_device(seed: u64) {
        let t = random(seed).unwrap();
        for (x, y) in all_pairs(&t) {
            let p = t.path(x, y).unwrap();
            prop_assert_eq!(p.class == PathClass::Loc, x == y, "seed {} {} {}", seed, x, y);
            prop_assert_eq!(p.distance == 0, x == y);
        }
    }

    #[test]
    fn bus_addr_only_below_a_common_bridge(seed: u64) {
        let t = random(seed).unwrap();
        for (x, y) in all_pairs(&t) {
            let p = t.path(x, y).unwrap();
            if p.route == Route::BusAddr {
                prop_assert!(p.class <= PathClass::Pxb, "seed {} {} {}", seed, x, y);
                prop_assert!(p.acs_redirect.is_empty());
            }
            if p.class >= PathClass::Phb {
                prop_assert_ne!(&p.route, &Route::BusAddr);
            }
        }
    }
}

#[test]
fn a_bridge_known_only_as_a_bridge_counts_once() {
    let mut b = TopologyBuilder::new();
    let hb = b
        .host_bridge("hb", HostBridgeAt::new(HostBridgeP2p::None))
        .unwrap();
    let outer = b.bridge(hb, a("00:01.0")).unwrap();
    let inner = b.bridge(outer, a("01:00.0")).unwrap();
    b.endpoint(outer, a("01:01.0"), DeviceClass::Nic, vec![])
        .unwrap();
    b.endpoint(inner, a("02:00.0"), DeviceClass::Gpu, vec![])
        .unwrap();
    b.endpoint(inner, a("02:01.0"), DeviceClass::Gpu, vec![])
        .unwrap();
    let t = b.build().unwrap();
    let same = t.path(a("02:00.0"), a("02:01.0")).unwrap();
    assert_eq!((same.class, same.route), (PathClass::Pix, Route::BusAddr));
    let nested = t.path(a("02:00.0"), a("01:01.0")).unwrap();
    assert_eq!(
        (nested.class, nested.route),
        (PathClass::Pxb, Route::BusAddr)
    );
    assert!(b.downstream_port(outer, a("03:00.0")).is_err());
}
