//! Structure-aware fuzzing of every reader: well-formed inputs generated from a seed, then
//! mutated at random, plus depth and size bombs. The property is always the same: the reader
//! returns `Ok` or a typed `Err`, and never panics or overflows its stack. proptest prints the
//! seed of any failing case; each test runs a bounded number of cases (a few seconds).

mod fake_sysfs;

use fake_sysfs::{write_topology, FakeSysfs};
use p2p_core::rand::SplitMix64;
use p2p_core::topology::presets;
use p2p_core::topology::{file, nccl, sysfs, Topology};
use proptest::prelude::*;
use std::fmt::Write;

/// Bytes that make mutations land on structure: markup, separators, digits, hex prefixes,
/// signs and the extremes of numbers.
const FRAGMENTS: &[&str] = &[
    "<",
    ">",
    "/>",
    "</pci>",
    "<pci busid=\"",
    "\"",
    "=",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "0x",
    "-1",
    "ffff",
    "0xffffffffffffffff",
    "18446744073709551616",
    "\n",
    " ",
    ".",
    "\u{0}",
    "é",
    "<nvlink target=\"",
    "\"children\":[",
    "\"kind\":\"bridge\"",
];

/// Applies 1..=8 random edits: delete a span, duplicate a span, insert a fragment, replace a
/// character, truncate. Works on chars so the result stays a `str`.
fn mutate(text: &str, rng: &mut SplitMix64) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(8) {
        let len = chars.len() as u64;
        let at = if len == 0 { 0 } else { rng.below(len) } as usize;
        let span = (1 + rng.below(64) as usize).min(chars.len() - at);
        match rng.below(5) {
            0 => {
                chars.drain(at..at + span);
            }
            1 => {
                let copy: Vec<char> = chars[at..at + span].to_vec();
                chars.splice(at..at, copy);
            }
            2 => {
                let frag = FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize];
                chars.splice(at..at, frag.chars());
            }
            3 if at < chars.len() => chars[at] = char::from(b'!' + rng.below(94) as u8),
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

/// An NCCL topology file of a random shape: `<cpu>`s holding switches, devices directly, GPUs
/// with `<nvlink>` children, NICs with and without a PCI address, empty attributes.
fn nccl_file(rng: &mut SplitMix64) -> String {
    let mut x = String::from("<system version=\"1\">\n");
    let mut bus = 1u32;
    for cpu in 0..1 + rng.below(3) {
        let vendor = ["GenuineIntel", "AuthenticAMD", ""][rng.below(3) as usize];
        let _ = writeln!(
            x,
            "<cpu numaid=\"{cpu}\" arch=\"x86_64\" vendor=\"{vendor}\" familyid=\"{}\" modelid=\"{}\">",
            [6, 25, 23][rng.below(3) as usize],
            rng.below(120)
        );
        // The first host holds a device at least: a file without any is not a machine.
        for _ in 0..rng.below(4) + u64::from(cpu == 0) {
            nccl_pci(&mut x, rng, &mut bus, 0);
        }
        if rng.below(2) == 0 {
            x.push_str(
                "<nic><net name=\"eth0\" dev=\"0\" speed=\"\" port=\"1\" gdr=\"0\"/></nic>\n",
            );
        }
        x.push_str("</cpu>\n");
    }
    x.push_str("</system>\n");
    x
}

fn nccl_pci(x: &mut String, rng: &mut SplitMix64, bus: &mut u32, depth: u32) {
    *bus += 1;
    let busid = format!("{:04x}:{:02x}:00.0", *bus / 256, *bus % 256);
    if depth < 3 && rng.below(3) == 0 {
        // Switch busids are labels: cloud VMs repeat synthetic ones.
        let busid = if rng.below(2) == 0 {
            format!("ffff:ff:{:02x}.0", rng.below(4))
        } else {
            busid
        };
        let _ = writeln!(
            x,
            "<pci busid=\"{busid}\" class=\"0x060400\" link_speed=\"\" link_width=\"16\">"
        );
        for _ in 0..1 + rng.below(3) {
            nccl_pci(x, rng, bus, depth + 1);
        }
        x.push_str("</pci>\n");
        return;
    }
    match rng.below(3) {
        0 => {
            let _ = writeln!(x, "<pci busid=\"{busid}\" class=\"0x030200\" vendor=\"0x10de\"><gpu dev=\"{}\" sm=\"90\" rank=\"0\" gdr=\"1\">", rng.below(8));
            for _ in 0..rng.below(3) {
                let _ = writeln!(
                    x,
                    "<nvlink target=\"0000:{:02x}:00.0\" count=\"{}\" tclass=\"0x030200\"/>",
                    rng.below(256),
                    rng.below(18)
                );
            }
            x.push_str("</gpu></pci>\n");
        }
        1 => {
            let _ = writeln!(x, "<pci busid=\"{busid}\" class=\"0x020700\"><nic><net name=\"mlx5_{}\" dev=\"0\" speed=\"200000\"/></nic></pci>", rng.below(8));
        }
        _ => {
            let _ = writeln!(x, "<pci busid=\"{busid}\" class=\"0x010802\"/>");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The JSON file format: random machines written out, then mutated.
    #[test]
    fn json_reader_never_panics(seed in any::<u64>()) {
        let mut rng = SplitMix64::new(seed);
        let t = presets::random(seed % 64).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let text = mutate(&file::to_json(&t), &mut rng);
        let _ = file::from_json(&text, "fuzz.json");
    }

    /// NCCL XML of every shape, then mutated.
    #[test]
    fn nccl_reader_never_panics(seed in any::<u64>()) {
        let mut rng = SplitMix64::new(seed);
        let text = nccl_file(&mut rng);
        // A file NCCL accepts imports.
        let imported = nccl::from_xml(&text, "fuzz.xml");
        prop_assert!(imported.is_ok(), "{:?}\n{}", imported.err(), text);
        let _ = nccl::from_xml(&mutate(&text, &mut rng), "fuzz.xml");
    }

    /// Depth bombs at and around every limit that applies: the NCCL reader's, serde_json's.
    #[test]
    fn depth_bombs_are_refused(depth in prop_oneof![0usize..80, 80usize..3000]) {
        let mut xml = String::from("<system><cpu numaid=\"0\">");
        for i in 0..depth {
            let _ = write!(xml, "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\">", i / 256, i % 256);
        }
        xml.push_str(&"</pci>".repeat(depth));
        xml.push_str("</cpu></system>");
        let r = nccl::from_xml(&xml, "deep.xml");
        prop_assert_eq!(r.is_ok(), (1..=64).contains(&depth), "{:?}", r.err());
        let mut json = String::from(r#"{"host_bridges":[{"name":"h","children":["#);
        for i in 0..depth {
            let _ = write!(json, r#"{{"kind":"bridge","addr":"{:04x}:{:02x}:00.0","children":["#, i / 256, i % 256);
        }
        json.push_str(&"]}".repeat(depth));
        json.push_str("]}]}");
        // serde_json refuses JSON nested deeper than 128 (about 62 bridges); the builder refuses
        // trees deeper than 64.
        let r = file::from_json(&json, "deep.json");
        prop_assert!(depth > 60 || r.is_ok(), "{}: {:?}", depth, r.err());
        prop_assert!(depth <= 64 || r.is_err());
    }
}

/// One random machine written as sysfs, with one attribute of one device mutated.
fn mutated_sysfs(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = SplitMix64::new(seed);
    let t: Topology = presets::random(seed % 16).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let fs = FakeSysfs::new(&format!("fuzz{seed:x}"));
    write_topology(&fs, &t);
    let devices: Vec<_> = std::fs::read_dir(fs.root.join("bus/pci/devices"))
        .and_then(|d| {
            d.map(|e| e.and_then(|e| std::fs::canonicalize(e.path())))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = &devices[rng.below(devices.len() as u64) as usize];
    let attrs = sysfs::FUNCTION_FILES;
    let path = dir.join(attrs[rng.below(attrs.len() as u64) as usize]);
    let old = std::fs::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let new = if path.ends_with("config") {
        let mut b = old;
        for _ in 0..=rng.below(16) {
            let at = rng.below(b.len().max(1) as u64) as usize;
            match rng.below(3) {
                0 if at < b.len() => b[at] = rng.next_u64() as u8,
                1 => b.truncate(at),
                _ => b.resize(at + rng.below(5000) as usize, 0xff),
            }
        }
        b
    } else {
        mutate(&String::from_utf8_lossy(&old), &mut rng).into_bytes()
    };
    std::fs::write(&path, new).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let _ = sysfs::scan(&fs.root);
    Ok(())
}

proptest! {
    // Each case writes a tree of a few hundred files: fewer cases, still a few seconds.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// sysfs attributes and config space of a real-shaped tree, one file mutated per case.
    #[test]
    fn sysfs_reader_never_panics(seed in any::<u64>()) {
        mutated_sysfs(seed)?;
    }
}
