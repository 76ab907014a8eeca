//! Reads this machine's `/sys` and checks every device found against facts read independently:
//! `lspci` when it is installed (CI installs pciutils), else a reader written here from the
//! kernel's documented formats, sharing no code with the library.

use p2p_core::topology::sysfs;
use p2p_core::PciAddr;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// (BAR index, CPU address, size) of every assigned memory BAR.
type Bars = BTreeSet<(u8, u64, u64)>;

fn lspci_available() -> bool {
    Command::new("lspci")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn lspci(args: &[&str]) -> String {
    let out = Command::new("lspci").args(args).output().unwrap();
    assert!(out.status.success(), "lspci {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// `[size=512K]` → bytes.
fn lspci_size(s: &str) -> u64 {
    let (num, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().unwrap() * mult
}

fn bars_from_lspci(addr: PciAddr) -> Bars {
    let text = lspci(&["-D", "-vv", "-s", &addr.to_string()]);
    let mut bars = Bars::new();
    for line in text.lines().map(str::trim) {
        // "Region 0: Memory at 4000000000 (64-bit, non-prefetchable) [size=512K]"
        let Some(rest) = line.strip_prefix("Region ") else {
            continue;
        };
        let Some((idx, rest)) = rest.split_once(": Memory at ") else {
            continue;
        };
        let Some((addr_hex, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(cpu) = u64::from_str_radix(addr_hex, 16) else {
            continue; // "<unassigned>"
        };
        if rest.contains("[disabled]") || rest.contains("[virtual]") {
            continue;
        }
        let size = rest
            .split("[size=")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .map(lspci_size)
            .unwrap();
        bars.insert((idx.parse().unwrap(), cpu, size));
    }
    bars
}

fn bars_from_resource_file(dir: &Path) -> Bars {
    let text = std::fs::read_to_string(dir.join("resource")).unwrap();
    let mut bars = Bars::new();
    for (i, line) in text.lines().take(6).enumerate() {
        let v: Vec<u64> = line
            .split(' ')
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap())
            .collect();
        let (start, end, flags) = (v[0], v[1], v[2]);
        if flags & 0x200 != 0 && flags & 0x3000_0000 == 0 && end > start {
            bars.insert((i as u8, start, end - start + 1));
        }
    }
    bars
}

#[test]
fn every_device_of_this_machine_matches_independent_facts() {
    let listing = Path::new("/sys/bus/pci/devices");
    let Ok(entries) = std::fs::read_dir(listing) else {
        // Nothing to check against: a machine without PCI (or without sysfs) must still scan.
        println!("no /sys/bus/pci/devices on this machine");
        assert!(sysfs::scan(Path::new("/sys")).is_ok() || !Path::new("/sys/devices").exists());
        return;
    };
    let scan = sysfs::scan(Path::new("/sys")).unwrap();
    for note in &scan.notes {
        println!("note: {note}");
    }

    let use_lspci = lspci_available();
    println!(
        "independent source: {}",
        if use_lspci {
            "lspci"
        } else {
            "the resource files"
        }
    );
    let expected: BTreeSet<PciAddr> = if use_lspci {
        lspci(&["-D", "-n"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|a| a.parse().unwrap())
            .collect()
    } else {
        entries
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect()
    };
    let found: BTreeSet<PciAddr> = scan.devices.iter().map(|d| d.addr).collect();
    assert_eq!(found, expected, "the BDF list");
    assert!(!found.is_empty() || expected.is_empty());

    let mut checked = 0;
    for (addr, ep) in scan.topology.endpoints() {
        let want = if use_lspci {
            bars_from_lspci(addr)
        } else {
            bars_from_resource_file(&listing.join(addr.to_string()))
        };
        let got: Bars = ep.bars.iter().map(|b| (b.index, b.cpu.0, b.size)).collect();
        assert_eq!(got, want, "BARs of {addr}");
        checked += 1;
    }
    println!(
        "{checked} endpoints checked, {} functions in all",
        found.len()
    );
}
