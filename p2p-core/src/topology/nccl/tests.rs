use super::*;
use crate::topology::{DeviceClass, PathClass, Route};

fn a(s: &str) -> PciAddr {
    s.parse().unwrap()
}

/// The import said `words` in a note.
fn assert_noted(imp: &NcclImport, words: &str) {
    assert!(
        imp.notes.iter().any(|n| n.contains(words)),
        "no note with {words:?} in {:?}",
        imp.notes
    );
}

fn example() -> NcclImport {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/topologies/nccl-2socket.xml");
    from_path(&path).unwrap()
}

#[test]
fn reads_the_published_format() {
    let imp = example();
    let t = &imp.topology;
    let names: Vec<(String, DeviceClass)> = t
        .endpoints()
        .map(|(_, e)| (e.name.clone(), e.class))
        .collect();
    assert_eq!(names.len(), 9);
    assert!(names.contains(&("GPU5".into(), DeviceClass::Gpu)));
    assert!(names.contains(&("mlx5_1".into(), DeviceClass::Nic)));
    assert_eq!(t.host_bridges().count(), 2);
    assert_eq!(t.numa_of(a("0000:89:00.0")).unwrap(), 1);
    assert!(!t.cpu_routes_p2p());
    // The CPU-attached Ethernet port has no PCI address: said, not invented.
    assert_noted(&imp, "<nic> outside any <pci>");
}

#[test]
fn classes_and_routes_follow_nccls_switches() {
    let t = example().topology;
    let check = |x: &str, y: &str, class: PathClass, route: Route| {
        let p = t.path(a(x), a(y)).unwrap();
        assert_eq!((p.class, p.route), (class, route), "{x} -> {y}");
    };
    check("1b:00.0", "1c:00.0", PathClass::Pix, Route::BusAddr);
    check("1b:00.0", "1d:00.0", PathClass::Pix, Route::BusAddr);
    // Skylake-SP host bridges route P2P across bridges and sockets.
    check(
        "1b:00.0",
        "3f:00.0",
        PathClass::Phb,
        Route::ThroughHostBridge,
    );
    check(
        "1b:00.0",
        "8a:00.0",
        PathClass::Sys,
        Route::ThroughHostBridge,
    );
    // GPU5 sits below a second switch: two bridges from mlx5_2.
    check("8e:00.0", "8a:00.0", PathClass::Pxb, Route::BusAddr);
}

#[test]
fn cpu_models_decide_the_host_bridge_rule() {
    let xml = |vendor: &str, family: &str, model: &str| {
        format!(
            r#"<system version="1">
  <cpu numaid="0" vendor="{vendor}" familyid="{family}" modelid="{model}">
    <pci busid="0000:01:00.0" class="0x030000"><gpu dev="0"/></pci>
    <pci busid="0000:02:00.0" class="0x020000"><nic><net name="eth1"/></nic></pci>
  </cpu>
  <cpu numaid="1" vendor="{vendor}" familyid="{family}" modelid="{model}">
    <pci busid="0000:81:00.0" class="0x020000"><nic><net name="eth2"/></nic></pci>
  </cpu>
</system>"#
        )
    };
    let route = |x: &str, from: &str, to: &str| {
        let t = from_xml(x, "t.xml").unwrap().topology;
        t.path(a(from), a(to)).unwrap().route
    };
    // AMD Zen: the CPU routes everything.
    let amd = xml("AuthenticAMD", "25", "1");
    assert!(from_xml(&amd, "t.xml").unwrap().topology.cpu_routes_p2p());
    assert_eq!(route(&amd, "01:00.0", "81:00.0"), Route::ThroughHostBridge);
    // Haswell-EP: same bridge only.
    let hsw = xml("GenuineIntel", "6", "63");
    assert_eq!(route(&hsw, "01:00.0", "02:00.0"), Route::ThroughHostBridge);
    assert!(matches!(
        route(&hsw, "01:00.0", "81:00.0"),
        Route::Unsupported(_)
    ));
    // An unlisted model: nothing through the host bridge.
    let other = xml("GenuineIntel", "6", "143");
    assert!(matches!(
        route(&other, "01:00.0", "02:00.0"),
        Route::Unsupported(_)
    ));
}

#[test]
fn malformed_files_give_line_numbered_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("<system>\n  <cpu numaid=\"0\">\n  </system>", "line 3", "cpu"),
        ("<system>\n<cpu numaid=\"0\">\n<pci class=\"0x030000\"/>\n</cpu>\n</system>", "line 3", "busid"),
        ("<system>\n<cpu numaid=\"zero\"/>\n</system>", "line 2", "numaid"),
        ("<system>\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.9\" class=\"0x030000\"/>\n</cpu>\n</system>", "line 3", "0000:01:00.9"),
        ("<system>\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"\"><gpu dev=\"x\"/></pci>\n</cpu>\n</system>", "line 3", "dev=\"x\""),
        ("<topology/>", "line 1", "<system>"),
        ("<system>\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"0x1000000\"/>\n</cpu>\n</system>", "line 3", "24-bit"),
        ("<system>\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"0x030000\"/>\n<pci busid=\"0000:01:00.0\" class=\"0x030000\"/>\n</cpu>\n</system>", "line 4", "used twice"),
        ("", "line 1", ""),
    ];
    for (xml, line, word) in cases {
        let err = from_xml(xml, "bad.xml").unwrap_err().to_string();
        assert!(
            err.contains("bad.xml") && err.contains(line) && err.contains(word),
            "{xml:?} gave {err}"
        );
    }
}

/// The `i`th of many distinct bus ids.
fn nth_busid(i: usize) -> String {
    format!("{:04x}:{:02x}:00.0", i / 256, i % 256)
}

/// `depth` nested bridges with distinct bus ids, one per line from line 3.
fn nested_bridges(depth: usize) -> String {
    let mut xml = String::from("<system version=\"1\">\n<cpu numaid=\"0\">\n");
    for i in 0..depth {
        let busid = nth_busid(i);
        xml.push_str(&format!("<pci busid=\"{busid}\" class=\"0x060400\">\n"));
    }
    xml.push_str(&"</pci>".repeat(depth));
    xml.push_str("</cpu></system>\n");
    xml
}

#[test]
fn a_depth_bomb_is_refused_at_the_line_it_goes_too_deep() {
    // 2000 nested <pci> overflowed the stack (p2pctl aborted) before readers had a depth limit.
    let err = from_xml(&nested_bridges(2000), "bomb.xml").unwrap_err();
    let limit = u64::from(crate::topology::limits::MAX_DEPTH);
    assert_eq!(
        err,
        Error::InputLimit {
            path: "bomb.xml".into(),
            // <pci> number i (from 0) is on line 3 + i at depth i + 1: depth 65 is line 67.
            line: Some(67),
            what: "nesting depth",
            limit,
        }
    );
    // At the limit itself the file reads.
    let deepest = from_xml(&nested_bridges(limit as usize), "ok.xml").unwrap();
    assert_eq!(deepest.topology.node_ids().count(), 1 + limit as usize);
}

#[test]
fn size_and_width_bombs_end_quickly() {
    let limit = crate::topology::limits::MAX_FILE_BYTES;
    let huge = format!("<system>{}</system>", " ".repeat(limit as usize));
    assert!(matches!(
        from_xml(&huge, "huge.xml"),
        Err(Error::InputLimit {
            what: "file size in bytes",
            ..
        })
    ));
    // Thousands of <cpu>s: host bridges are checked for duplicates in linear time.
    let mut wide = String::from("<system>");
    for i in 0..5000 {
        let busid = nth_busid(i);
        wide.push_str(&format!(
            "<cpu numaid=\"{i}\"><pci busid=\"{busid}\" class=\"0x020000\"/></cpu>"
        ));
    }
    wide.push_str("</system>");
    let started = std::time::Instant::now();
    let imp = from_xml(&wide, "wide.xml").unwrap();
    assert_eq!(imp.topology.host_bridges().count(), 5000);
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
}

fn class_of(t: &Topology, x: &str, y: &str) -> PathClass {
    t.path(a(x), a(y)).unwrap().class
}

#[test]
fn cloud_files_import_with_nccls_path_rules_and_nvlinks() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/topologies/nccl-cloud.xml");
    let imp = from_path(&path).unwrap();
    let t = &imp.topology;
    let gpus: Vec<PciAddr> = t
        .endpoints()
        .filter(|(_, e)| e.class == DeviceClass::Gpu)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(gpus.len(), 8);
    assert_eq!(t.endpoints().count(), 16);
    // Same synthetic switch, same <cpu> across switches, across <cpu>s.
    assert_eq!(class_of(t, "10:00.0", "11:00.0"), PathClass::Pix);
    assert_eq!(class_of(t, "10:00.0", "20:00.0"), PathClass::Pix);
    assert_eq!(class_of(t, "10:00.0", "30:00.0"), PathClass::Phb);
    assert_eq!(class_of(t, "10:00.0", "50:00.0"), PathClass::Sys);
    // Every GPU pair reaches the other over the NVSwitch fabric; GPU and NIC do not.
    for &x in &gpus {
        for &y in gpus.iter().filter(|&&y| y != x) {
            assert_eq!(t.nvlinks().between(x, y), 18, "{x} {y}");
        }
    }
    assert_eq!(t.nvlinks().between(a("10:00.0"), a("11:00.0")), 0);
    assert_noted(&imp, "<nic> outside any <pci>");
}

#[test]
fn every_cloud_shape_imports() {
    // Devices directly under each <cpu>, no switch, empty attributes, a NIC without address.
    let flat = r#"<system version="1">
  <cpu numaid="0" vendor="" familyid="" modelid="">
    <pci busid="0000:01:00.0" class="0x030200" link_speed="" link_width=""><gpu dev="0" sm="" rank="0" gdr=""/></pci>
    <pci busid="0000:02:00.0" class="0x020000" link_speed=""><nic><net name="" dev="0"/></nic></pci>
    <nic><net name="eth0" dev="1"/></nic>
  </cpu>
  <cpu numaid="1">
    <pci busid="0000:81:00.0" class="0x030200"><gpu dev="1" rank="1"/></pci>
  </cpu>
</system>"#;
    let t = from_xml(flat, "flat.xml").unwrap().topology;
    assert_eq!(class_of(&t, "01:00.0", "02:00.0"), PathClass::Phb);
    assert_eq!(class_of(&t, "01:00.0", "81:00.0"), PathClass::Sys);
    assert_eq!(t.endpoint(a("02:00.0")).unwrap().name, "NIC0");

    // The same switch label under two hosts, and a label that is also a device's busid.
    let labels = r#"<system version="1">
  <cpu numaid="0">
    <pci busid="ffff:ff:01.0" class="0x060400">
      <pci busid="0001:00:00.0" class="0x030200"><gpu dev="0"><nvlink target="0002:00:00.0" count="4" tclass="0x030200"/><c2c bw="40" count="10"/></gpu></pci>
      <pci busid="0001:01:00.0" class="0x020700"><nic><net name="ib0" dev="0"/></nic></pci>
    </pci>
  </cpu>
  <cpu numaid="1">
    <pci busid="ffff:ff:01.0" class="0x060400">
      <pci busid="0002:00:00.0" class="0x030200"><gpu dev="1"><nvlink target="0001:00:00.0" count="4" tclass="0x030200"/></gpu></pci>
    </pci>
    <pci busid="0002:01:00.0" class="0x060400">
      <pci busid="0002:02:00.0" class="0x010802"/>
    </pci>
    <pci busid="0002:02:00.0" class="0x060400"/>
  </cpu>
</system>"#;
    let imp = from_xml(labels, "labels.xml").unwrap();
    let t = &imp.topology;
    assert_eq!(class_of(t, "0001:00:00.0", "0001:01:00.0"), PathClass::Pix);
    assert_eq!(class_of(t, "0001:00:00.0", "0002:00:00.0"), PathClass::Sys);
    assert_eq!(t.nvlinks().between(a("0001:00:00.0"), a("0002:00:00.0")), 4);
    let unaddressed = imp
        .notes
        .iter()
        .filter(|n| n.contains("kept without one"))
        .count();
    assert_eq!(unaddressed, 2, "{:?}", imp.notes);
    assert_noted(&imp, "<c2c> of GPU 0001:00:00.0 is not modelled");
    // The file round-trips through p2pdma's own format, label-only switches and NVLinks too.
    let back = crate::topology::file::from_json(&crate::topology::file::to_json(t), "t").unwrap();
    assert_eq!(back.nvlinks(), t.nvlinks());
    assert_eq!(back.node_ids().count(), t.node_ids().count());
    let endpoints = |t: &Topology| -> Vec<(PciAddr, crate::topology::Endpoint)> {
        t.endpoints().map(|(a, e)| (a, e.clone())).collect()
    };
    assert_eq!(endpoints(&back), endpoints(t));
    assert_eq!(
        back.endpoint(a("0002:02:00.0")).unwrap().pci_class,
        Some(0x010802)
    );
}
