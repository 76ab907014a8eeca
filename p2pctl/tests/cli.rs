//! `p2pctl` as a user runs it: the JSON shape of `topo --json` for every preset, the other
//! outputs, `explain`, and errors on bad input.

use p2p_core::PciAddr;
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Command, Output};

fn p2pctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .args(args)
        .output()
        .expect("run p2pctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn presets() -> Vec<String> {
    let o = p2pctl(&["presets"]);
    assert!(o.status.success());
    stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// Checks the documented shape exactly:
/// `{"devices":[{"id","class","numa"}],"pairs":[{"a","b","path","route"[,"nvlinks"]}]}`.
fn validate(json: &Value) -> Result<usize, String> {
    let top = json.as_object().ok_or("top level is not an object")?;
    let keys: HashSet<&str> = top.keys().map(String::as_str).collect();
    if keys != HashSet::from(["devices", "pairs"]) {
        return Err(format!("top-level keys {keys:?}"));
    }
    let devices = top["devices"].as_array().ok_or("devices is not an array")?;
    let mut ids = Vec::new();
    for d in devices {
        let d = d.as_object().ok_or("device is not an object")?;
        let keys: HashSet<&str> = d.keys().map(String::as_str).collect();
        if keys != HashSet::from(["id", "class", "numa"]) {
            return Err(format!("device keys {keys:?}"));
        }
        let id: PciAddr = d["id"]
            .as_str()
            .ok_or("id not a string")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if id.to_string() != d["id"].as_str().unwrap() {
            return Err(format!("id {} not in canonical lspci form", d["id"]));
        }
        if !["gpu", "nic", "nvme", "accelerator", "other"]
            .contains(&d["class"].as_str().ok_or("class not a string")?)
        {
            return Err(format!("class {}", d["class"]));
        }
        d["numa"].as_u64().ok_or("numa not a number")?;
        ids.push(id);
    }
    let pairs = top["pairs"].as_array().ok_or("pairs is not an array")?;
    let mut seen = HashSet::new();
    for p in pairs {
        let p = p.as_object().ok_or("pair is not an object")?;
        let keys: HashSet<&str> = p.keys().map(String::as_str).collect();
        let nvlinks = p.get("nvlinks").map(|n| n.as_u64().filter(|&n| n > 0));
        if nvlinks == Some(None) {
            return Err(format!(
                "nvlinks {:?} is not a positive count",
                p["nvlinks"]
            ));
        }
        let required = HashSet::from(["a", "b", "path", "route"]);
        if keys
            .difference(&HashSet::from(["nvlinks"]))
            .copied()
            .collect::<HashSet<_>>()
            != required
        {
            return Err(format!("pair keys {keys:?}"));
        }
        let a: PciAddr = p["a"]
            .as_str()
            .ok_or("a")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let b: PciAddr = p["b"]
            .as_str()
            .ok_or("b")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if a == b || !ids.contains(&a) || !ids.contains(&b) || !seen.insert((a.min(b), a.max(b))) {
            return Err(format!("pair {a} {b} repeated, self or unknown"));
        }
        if !["LOC", "PIX", "PXB", "PHB", "NODE", "SYS"].contains(&p["path"].as_str().ok_or("path")?)
        {
            return Err(format!("path {}", p["path"]));
        }
        if !["bus-addr", "host-bridge", "unsupported"]
            .contains(&p["route"].as_str().ok_or("route")?)
        {
            return Err(format!("route {}", p["route"]));
        }
    }
    let n = ids.len();
    if seen.len() != n * (n - 1) / 2 {
        return Err(format!("{} pairs for {n} devices", seen.len()));
    }
    Ok(n)
}

#[test]
fn every_preset_prints_the_documented_json_shape() {
    let names = presets();
    assert!(names.len() >= 3, "{names:?}");
    for name in names {
        let o = p2pctl(&["topo", "--preset", &name, "--json"]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let n = validate(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(n >= 4, "{name}");
    }
}

#[test]
fn the_validator_rejects_wrong_shapes() {
    let good: Value = serde_json::from_str(&stdout(&p2pctl(&[
        "topo",
        "--preset",
        "workstation",
        "--json",
    ])))
    .unwrap();
    let mut extra = good.clone();
    extra["extra"] = Value::Null;
    assert!(validate(&extra).is_err());
    let mut dup = good.clone();
    let first = dup["pairs"][0].clone();
    dup["pairs"].as_array_mut().unwrap().push(first);
    assert!(validate(&dup).is_err());
    let mut bad_route = good;
    bad_route["pairs"][0]["route"] = "bus".into();
    assert!(validate(&bad_route).is_err());
}

#[test]
fn dgx_preset_has_the_expected_classes() {
    let json: Value =
        serde_json::from_str(&stdout(&p2pctl(&["topo", "--preset", "dgx", "--json"]))).unwrap();
    let classes: HashSet<&str> = json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(classes, HashSet::from(["PIX", "PHB", "NODE", "SYS"]));
    let numas: HashSet<u64> = json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["numa"].as_u64().unwrap())
        .collect();
    assert_eq!(numas, HashSet::from([0, 1]));
}

#[test]
fn matrix_dot_and_export() {
    let m = stdout(&p2pctl(&["topo", "--preset", "dgx"]));
    assert!(m.contains("GPU7") && m.contains("Legend") && m.contains("SYS"));
    let d = stdout(&p2pctl(&["topo", "--preset", "acs-switch", "--dot"]));
    assert!(d.starts_with("graph topology {") && d.contains("ACS"));
    let dir = std::env::temp_dir().join(format!("p2pctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ws.json");
    std::fs::write(
        &file,
        stdout(&p2pctl(&["topo", "--preset", "workstation", "--export"])),
    )
    .unwrap();
    let from_file = stdout(&p2pctl(&[
        "topo",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]));
    let from_preset = stdout(&p2pctl(&["topo", "--preset", "workstation", "--json"]));
    assert_eq!(from_file, from_preset);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `explain` for the ACS switch's GPU memory and an ODP NIC: the pair ACS redirects.
const ACS_SWITCH_PAIR: [&str; 6] = [
    "explain",
    "0000:03:00.0",
    "0000:05:00.0",
    "--preset",
    "acs-switch",
    "--odp",
];

#[test]
fn explain_prints_the_plan_and_exits_3_on_refusal() {
    let o = p2pctl(&[&ACS_SWITCH_PAIR[..], &["--movable"]].concat());
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(
        s.contains("plan: via-iommu") && s.contains("ACS redirect"),
        "{s}"
    );
    let o = p2pctl(&[
        "explain",
        "0000:03:00.0",
        "0000:05:00.0",
        "--preset",
        "workstation",
        "--movable",
        "--unpinnable",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).contains("no ODP"));
}

#[test]
fn bad_input_fails_with_a_message_that_names_it() {
    let o = p2pctl(&["topo", "--preset", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"nope\""));
    let o = p2pctl(&["topo", "--file", "/nonexistent/t.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/t.json"));
    let o = p2pctl(&[
        "explain",
        "0000:03:00.0",
        "0000:99:00.0",
        "--preset",
        "workstation",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0000:99:00.0"));
    let o = p2pctl(&["explain", "0000:03:00.0", "zz", "--preset", "workstation"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "clap rejects an unparsable address"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("zz"));
}

#[test]
fn demo_walks_the_story_and_is_deterministic() {
    let a = p2pctl(&["demo", "--seed", "5", "--log"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let s = stdout(&a);
    for step in ["1. ", "2. ", "3. ", "4. ", "5. ", "6. ", "7. "] {
        assert!(s.contains(step), "missing step {step:?} in\n{s}");
    }
    assert!(
        s.contains("without ODP") && s.contains("0 sanitizer findings"),
        "{s}"
    );
    let b = p2pctl(&["demo", "--seed", "5", "--log"]);
    assert_eq!(stdout(&a), stdout(&b), "same seed, same output");
}

#[test]
fn topo_reads_sysfs_and_nccl_files() {
    // This machine: with no input option, /sys; the same as --sysfs /sys and --sysfs.
    let plain = p2pctl(&["topo", "--export"]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let explicit = p2pctl(&["topo", "--sysfs", "/sys", "--export"]);
    let bare = p2pctl(&["topo", "--export", "--sysfs"]);
    assert_eq!(stdout(&plain), stdout(&explicit));
    assert_eq!(stdout(&plain), stdout(&bare));
    let exported: Value = serde_json::from_str(&stdout(&plain)).unwrap();
    let listed = std::fs::read_dir("/sys/bus/pci/devices").map_or(0, |d| d.count());
    let text = stdout(&plain);
    assert_eq!(text.matches("\"addr\"").count(), listed, "{exported}");

    let xml = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/topologies/nccl-2socket.xml"
    );
    let o = p2pctl(&["topo", "--nccl-xml", xml]);
    assert!(o.status.success());
    let m = stdout(&o);
    assert!(
        m.contains("GPU5") && m.contains("mlx5_2") && m.contains("SYS"),
        "{m}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("note:"));

    let o = p2pctl(&["topo", "--sysfs", "/nonexistent-sys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent-sys"));
    let o = p2pctl(&["topo", "--nccl-xml", "/nonexistent.xml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.xml"));
    let o = p2pctl(&["topo", "--preset", "dgx", "--sysfs"]);
    assert_eq!(o.status.code(), Some(2), "one input at a time");
}

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("p2pctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hostile_inputs_end_in_an_error_not_a_crash() {
    let dir = Scratch::new("hostile");
    // 2000 nested <pci>: the NCCL reader overflowed its stack and p2pctl aborted.
    let mut xml = String::from("<system version=\"1\">\n<cpu numaid=\"0\">\n");
    for i in 0..2000 {
        xml.push_str(&format!(
            "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\">\n",
            i / 256,
            i % 256
        ));
    }
    xml.push_str(&"</pci>".repeat(2000));
    xml.push_str("</cpu></system>\n");
    let bomb = dir.0.join("bomb.xml");
    std::fs::write(&bomb, xml).unwrap();
    let o = p2pctl(&["topo", "--nccl-xml", bomb.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bomb.xml:67: nesting depth exceeds the limit of 64"),
        "{err}"
    );

    // A resource line of 2^64 bytes: an add overflow made p2pctl exit 101.
    let dev = dir.0.join("devices/pci0000:00/0000:00:02.0");
    std::fs::create_dir_all(&dev).unwrap();
    for (file, text) in [
        ("vendor", "0x10de"),
        ("device", "0x20b0"),
        ("class", "0x030200"),
        ("resource", "0x0 0xffffffffffffffff 0x40200"),
    ] {
        std::fs::write(dev.join(file), format!("{text}\n")).unwrap();
    }
    let o = p2pctl(&["topo", "--sysfs", dir.0.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("0000:00:02.0/resource") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn cloud_nccl_files_import_and_show_nvlinks() {
    let xml = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/topologies/nccl-cloud.xml"
    );
    let o = p2pctl(&["topo", "--nccl-xml", xml, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
    validate(&json).unwrap();
    let nv = json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["nvlinks"] == 18)
        .count();
    assert_eq!(nv, 8 * 7 / 2, "every GPU pair over the NVSwitch fabric");
    let o = p2pctl(&["topo", "--nccl-xml", xml]);
    let m = stdout(&o);
    assert!(
        m.contains("NV18") && m.contains("SYS") && m.contains("PIX"),
        "{m}"
    );
}

#[test]
fn topo_shows_this_machines_dma_endpoints_and_all_with_all() {
    let ids = |args: &[&str]| -> Vec<String> {
        let o = p2pctl(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
        validate(&json).unwrap();
        json["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let shown = ids(&["topo", "--json"]);
    let all = ids(&["topo", "--json", "--all"]);
    assert!(shown.iter().all(|d| all.contains(d)), "{shown:?} {all:?}");
    // Bridges and the host bridge's own function (class 0x06....) are never DMA endpoints.
    for d in &all {
        let class = std::fs::read_to_string(format!("/sys/bus/pci/devices/{d}/class"));
        if class.is_ok_and(|c| c.starts_with("0x06")) {
            assert!(!shown.contains(d), "{d} is a bridge function");
        }
    }
}

#[test]
fn rank_lists_peers_nearest_first_and_filters_by_class() {
    let o = p2pctl(&["rank", "0000:03:00.0", "--preset", "workstation"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(
        rows[0].contains("PIX") && rows[0].contains("bus-addr"),
        "{out}"
    );
    // The drive behind a host bridge that forwards no P2P comes last, with the reason.
    assert!(
        rows[3].contains("0000:10:00.0") && rows[3].contains("allow-list"),
        "{out}"
    );
    let o = p2pctl(&[
        "rank",
        "0000:03:00.0",
        "--preset",
        "workstation",
        "--class",
        "nvme",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("NVME0") && !out.contains("NIC0") && !out.contains("GPU1"),
        "{out}"
    );
    // Several devices: the providers for all of them, the unreachable drive last.
    let o = p2pctl(&[
        "rank",
        "0000:03:00.0",
        "0000:05:00.0",
        "--class",
        "nvme",
        "--preset",
        "workstation",
    ]);
    let out = stdout(&o);
    let first = out.find("0000:06:00.0").unwrap();
    let last = out.find("0000:10:00.0").unwrap();
    assert!(
        out.starts_with("Providers for GPU0, NIC0") && first < last,
        "{out}"
    );
    let o = p2pctl(&["rank", "0000:99:00.0", "--preset", "workstation"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0000:99:00.0"));
}

#[test]
fn explain_gives_acs_advice_under_the_verdict_and_in_json() {
    let args = ACS_SWITCH_PAIR;
    let o = p2pctl(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    let verdict = text.find("plan: ").unwrap();
    let advice = text.find("ACS advice").unwrap();
    assert!(verdict < advice, "{text}");
    assert!(
        text.contains("0000:02:00.0: RR CR (keeping SV UF)"),
        "{text}"
    );

    let o = p2pctl(&[&args[..], &["--json"]].concat());
    assert!(o.status.success());
    let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json["strategy"], "via-iommu");
    assert_eq!(json["acs_advice"]["kind"], "clear-redirect");
    assert_eq!(json["acs_advice"]["route_after"], "bus-addr");
    assert_eq!(json["acs_advice"]["changes"][1]["port"], "0000:02:02.0");

    // Refused because the host bridge forwards nothing: no ACS change helps; exit status 3.
    let o = p2pctl(&[
        "explain",
        "0000:03:00.0",
        "0000:10:00.0",
        "--preset",
        "workstation",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json["refused"], true);
    assert_eq!(json["acs_advice"]["kind"], "no-shared-switch");
}
