//! `p2pctl explain` prints facts that agree with the plan, as text and as JSON.

use serde_json::Value;
use std::process::Command;

fn explain(extra: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .args([
            "explain",
            "0000:03:00.0",
            "0000:05:00.0",
            "--preset",
            "workstation",
        ])
        .args(extra)
        .output()
        .expect("run p2pctl");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// The case: a 32-bit importer without ODP is refused; the first reason says the memory
/// would be pinned, and nothing says "revocable".
#[test]
fn a_refused_plan_is_not_called_revocable() {
    let (code, s) = explain(&["--dma-bits", "32"]);
    assert_eq!(code, Some(3), "{s}");
    assert!(s.contains("memory: not mapped (refused)"), "{s}");
    assert!(!s.contains("revocable"), "{s}");
    let (_, json) = explain(&["--dma-bits", "32", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["refused"], true);
    assert_eq!(v["pinned"], Value::Null);
    assert!(!json.contains("revocable"), "{json}");
}

#[test]
fn a_bounce_plan_for_a_non_odp_importer_is_pinned() {
    let (code, s) = explain(&["--dma-bits", "32", "--fallback", "bounce"]);
    assert_eq!(code, Some(0), "{s}");
    assert!(
        s.contains("plan: bounce") && s.contains("memory: pinned"),
        "{s}"
    );
    let (_, json) = explain(&["--dma-bits", "32", "--fallback", "bounce", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&v["pinned"], &v["memory"]),
        (&Value::Bool(true), &"pinned".into())
    );
    assert!(v["reasons"][0]
        .as_str()
        .unwrap()
        .contains("pinned while mapped"));
}

#[test]
fn an_odp_plan_is_revocable() {
    let (code, s) = explain(&["--odp", "--movable"]);
    assert_eq!(code, Some(0), "{s}");
    assert!(s.contains("memory: revocable"), "{s}");
}

/// `--require-isolation` refuses the workstation's switch route; every plan names its
/// isolation; a pair in one IOMMU group is said to be.
#[test]
fn isolation_is_stated_and_enforceable() {
    let (code, s) = explain(&["--odp"]);
    assert_eq!(code, Some(0), "{s}");
    assert!(
        s.contains("plan: direct") && s.contains("isolation: none"),
        "{s}"
    );
    let (code, s) = explain(&["--odp", "--require-isolation"]);
    assert_eq!(code, Some(3), "{s}");
    assert!(s.contains("requires IOMMU isolation"), "{s}");
    let (_, json) = explain(&[
        "--odp",
        "--require-isolation",
        "--fallback",
        "bounce",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["strategy"], "bounce");
    assert_eq!(v["isolation"], "page-granular");
    // The workstation's GPU and NIC sit under one switch without ACS: one IOMMU group.
    assert_eq!(v["shared_iommu_group"], true, "{json}");
    assert!(explain(&["--odp"]).1.contains("iommu group: shared"));
}
