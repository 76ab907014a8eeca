//! `p2pctl snapshot OUT`: the part of a sysfs tree the topology reader uses, copied to a
//! directory that `p2pctl topo --sysfs OUT` reads back to the same topology, as
//! `hwloc-gather-topology` does for hwloc. Users share it to show what their machine looks like.
//!
//! Copied: every PCI function that `bus/pci/devices` links to, at the same place below
//! `devices/` (so the hierarchy of bridges survives), with the files the reader uses
//! ([`sysfs::FUNCTION_FILES`]) and its `iommu_group` link; the `bus/pci/devices` links; the CPU
//! modalias, each NUMA node's CPU list and each CPU's package. Unprivileged, `config` reads as
//! its first 64 bytes: the copy holds what could be read, so ACS reads back as unknown, as it
//! does from `/sys`; the summary says so.

use clap::Args;
use p2p_core::topology::sysfs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The most bytes copied from one file (configuration space is 4096; text attributes are short).
const MAX_FILE: u64 = 64 << 10;

/// Arguments of `p2pctl snapshot`.
#[derive(Args)]
pub struct SnapshotArgs {
    /// Where to write the copy (a new or empty directory).
    out: PathBuf,
    /// The sysfs tree to copy.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,
}

/// What a snapshot copied.
#[derive(Debug, Default)]
struct Copied {
    functions: usize,
    files: usize,
    short_configs: usize,
}

/// Writes the snapshot and a summary; exit status 0, or 1 with the path that failed.
pub fn run(a: &SnapshotArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        return Err(format!("{} exists and is not empty", a.out.display()).into());
    }
    let copied = snapshot(&a.sysfs, &a.out)?;
    outln!(
        "wrote {}: {} PCI functions, {} files",
        a.out.display(),
        copied.functions,
        copied.files
    );
    if copied.short_configs > 0 {
        outln!(
            "note: {} config files could be read only in part (reading all of configuration \
             space needs CAP_SYS_ADMIN): ACS reads back as unknown; run as root for all of it",
            copied.short_configs
        );
    }
    outln!("read it with: p2pctl topo --sysfs {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn snapshot(root: &Path, out: &Path) -> Result<Copied, String> {
    let mut copied = Copied::default();
    let links = root.join("bus/pci/devices");
    let mut entries = list(&links)?;
    entries.sort();
    for link in entries {
        let target = std::fs::read_link(&link).map_err(|e| at(&link, e))?;
        let rel = below_devices(root, &link, &target)
            .ok_or_else(|| format!("{}: links outside devices/", link.display()))?;
        let dir = out.join("devices").join(&rel);
        copy_function(&root.join("devices").join(&rel), &dir, out, &mut copied)?;
        let name = link.file_name().unwrap_or_default();
        let back = Path::new("../../../devices").join(&rel);
        make_link(&back, &out.join("bus/pci/devices").join(name))?;
    }
    copy_system(root, out, &mut copied)?;
    Ok(copied)
}

/// The path below `devices/` that a `bus/pci/devices` link points to.
fn below_devices(root: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let dir = sysfs::function_dir(root, link, target)?;
    let devices = sysfs::lexical(&root.join("devices"));
    dir.strip_prefix(devices).ok().map(Path::to_owned)
}

fn copy_function(from: &Path, to: &Path, out: &Path, copied: &mut Copied) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| at(to, e))?;
    for name in sysfs::FUNCTION_FILES {
        let Some((bytes, size)) = read_capped(&from.join(name))? else {
            continue;
        };
        if *name == "config" && (bytes.len() as u64) < size.max(256) {
            copied.short_configs += 1;
        }
        let dest = to.join(name);
        std::fs::write(&dest, bytes).map_err(|e| at(&dest, e))?;
        copied.files += 1;
    }
    if let Ok(group) = std::fs::read_link(from.join("iommu_group")) {
        if let Some(n) = group.file_name() {
            let dir = out.join("kernel/iommu_groups").join(n);
            std::fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
            let depth = to.strip_prefix(out).map_or(0, |p| p.components().count());
            let up: PathBuf = std::iter::repeat_n("..", depth).collect();
            make_link(
                &up.join("kernel/iommu_groups").join(n),
                &to.join("iommu_group"),
            )?;
        }
    }
    copied.functions += 1;
    Ok(())
}

/// The CPU modalias (does the CPU route P2P), NUMA nodes' CPU lists and CPUs' packages.
fn copy_system(root: &Path, out: &Path, copied: &mut Copied) -> Result<(), String> {
    let mut files = vec![PathBuf::from("devices/system/cpu/modalias")];
    let nodes = root.join("devices/system/node");
    for node in list(&nodes).unwrap_or_default() {
        let name = node.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("node") {
            files.push(Path::new("devices/system/node").join(name).join("cpulist"));
        }
    }
    for cpu in list(&root.join("devices/system/cpu")).unwrap_or_default() {
        let name = cpu.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name
            .strip_prefix("cpu")
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            let f = Path::new("devices/system/cpu").join(name);
            files.push(f.join("topology/physical_package_id"));
        }
    }
    for rel in files {
        if let Some((bytes, _)) = read_capped(&root.join(&rel))? {
            let dest = out.join(&rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
            }
            std::fs::write(&dest, bytes).map_err(|e| at(&dest, e))?;
            copied.files += 1;
        }
    }
    Ok(())
}

/// What can be read of a file (at most [`MAX_FILE`]) and the size it claims; `None` when it
/// does not exist.
fn read_capped(path: &Path) -> Result<Option<(Vec<u8>, u64)>, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(path, e)),
    };
    let size = f.metadata().map_err(|e| at(path, e))?.len();
    let mut bytes = Vec::new();
    f.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| at(path, e))?;
    Ok(Some((bytes, size)))
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| at(dir, e))?;
    rd.map(|e| e.map(|e| e.path()).map_err(|e| at(dir, e)))
        .collect()
}

fn make_link(target: &Path, link: &Path) -> Result<(), String> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| at(link, e))
}

fn at(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}
