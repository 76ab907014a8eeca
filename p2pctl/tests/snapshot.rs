//! `p2pctl snapshot OUT` round trips: a copy of a sysfs tree reads back as the same topology,
//! with the same notes, for this machine's `/sys` and for fake trees written as Linux lays them
//! out (random machines, switches seen unprivileged, host bridges below a platform device).

#[path = "../../p2p-core/tests/fake_sysfs/mod.rs"]
mod fake_sysfs;

use fake_sysfs::{write_topology, Dev, FakeSysfs};
use p2p_core::topology::presets;
use std::path::Path;
use std::process::{Command, Output};

fn p2pctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .args(args)
        .output()
        .expect("run p2pctl")
}

/// What `topo` prints about a tree: the export, the pairs report, and the notes with the tree's
/// own path taken out.
fn reading(root: &Path) -> (String, String, String) {
    let r = root.to_str().unwrap();
    let export = p2pctl(&["topo", "--sysfs", r, "--export"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let pairs = p2pctl(&["topo", "--sysfs", r, "--json", "--all"]);
    let notes = String::from_utf8_lossy(&export.stderr).replace(r, "ROOT");
    (
        String::from_utf8_lossy(&export.stdout).into_owned(),
        String::from_utf8_lossy(&pairs.stdout).into_owned(),
        notes,
    )
}

/// Snapshots `root` into a fresh directory and checks it reads back the same.
fn round_trip(root: &Path, name: &str) -> String {
    let out = std::env::temp_dir().join(format!("p2pctl-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = p2pctl(&[
        "snapshot",
        out.to_str().unwrap(),
        "--sysfs",
        root.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(reading(&out), reading(root), "{name}");
    std::fs::remove_dir_all(&out).unwrap();
    summary
}

#[test]
fn this_machines_sys_round_trips() {
    let summary = round_trip(Path::new("/sys"), "sys");
    assert!(summary.contains("PCI functions"), "{summary}");
}

#[test]
fn fake_trees_round_trip() {
    for seed in 0..6 {
        let fs = FakeSysfs::new(&format!("snap{seed}"));
        write_topology(&fs, &presets::random(seed).unwrap());
        round_trip(&fs.root, &format!("random{seed}"));
    }
}

#[test]
fn host_bridges_below_a_platform_device_round_trip() {
    let fs = FakeSysfs::new("snap-arm");
    let hb = fs.host_bridge(0, 0);
    let rp = fs.device(&hb, &Dev::port("0000:00:00.0", 0x1e0f, 0x0001, 4));
    fs.device(
        &rp,
        &Dev::endpoint("0000:01:00.0", 0x144d, 0xa80a, 0x010802),
    );
    fs.move_host_bridge(&hb, "platform/soc/1c00000.pcie");
    round_trip(&fs.root, "arm");
}

#[test]
fn an_unprivileged_view_round_trips_and_says_so() {
    let fs = FakeSysfs::new("snap-short");
    fs.node(0, 0, 4, 0);
    let hb = fs.host_bridge(0, 0);
    let short = |d: Dev| Dev {
        config_readable: Some(64),
        ..d
    };
    let rp = fs.device(&hb, &short(Dev::port("0000:00:01.0", 0x8086, 0x2030, 4)));
    let up = fs.device(&rp, &short(Dev::port("0000:01:00.0", 0x10b5, 0x9797, 5)));
    for (i, card) in ["0000:03:00.0", "0000:04:00.0"].iter().enumerate() {
        let down = format!("0000:02:{:02x}.0", 8 * (i + 1));
        let d = fs.device(&up, &short(Dev::port(&down, 0x10b5, 0x9797, 6)));
        let gpu = Dev::endpoint(card, 0x10de, 0x20b0, 0x030200)
            .numa(0)
            .group(i as u32);
        fs.device(
            &d,
            &short(gpu.bar(0, 0x6000_0000 + ((i as u64) << 24), 1 << 24)),
        );
    }
    let summary = round_trip(&fs.root, "short");
    assert!(
        summary.contains("only in part") && summary.contains("unknown"),
        "{summary}"
    );
}

#[test]
fn a_non_empty_destination_is_refused() {
    let out = std::env::temp_dir().join(format!("p2pctl-snap-full-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let o = p2pctl(&["snapshot", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    std::fs::remove_dir_all(&out).unwrap();
}
