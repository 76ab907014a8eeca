//! Facts about host bridges and CPUs that sysfs keeps outside the PCI tree.

use super::attr;
use crate::error::Result;
use std::path::{Component, Path, PathBuf};

/// `pci0000:00` or `pci10000:e0` (a 32-bit VMD or Hyper-V domain) → (segment, bus); `None`
/// for names that are not host bridges.
pub(super) fn parse_host_bridge_name(name: &str) -> Option<(u32, u8)> {
    let rest = name.strip_prefix("pci")?;
    let (seg, bus) = rest.split_once(':')?;
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if !hex(seg) || !hex(bus) {
        return None;
    }
    Some((
        u32::from_str_radix(seg, 16).ok()?,
        u8::from_str_radix(bus, 16).ok()?,
    ))
}

/// Linux's `cpu_supports_p2pdma()` from `devices/system/cpu/modalias`
/// (`cpu:type:x86,ven0002fam0019mod0011:feature:...`: vendor 2 is AMD). False when the file is
/// missing or the CPU is not x86.
pub(super) fn cpu_routes_p2p(root: &Path) -> Result<bool> {
    let path = root.join("devices/system/cpu/modalias");
    let Some(text) = attr::optional_text(&path)? else {
        return Ok(false);
    };
    let Some(rest) = text.trim().strip_prefix("cpu:type:x86,") else {
        return Ok(false);
    };
    let field = |tag: &str, len: usize| -> Result<u32> {
        rest.find(tag)
            .and_then(|i| rest.get(i + tag.len()..i + tag.len() + len))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| attr::sysfs_err(&path, format!("{tag} field missing in {rest:?}")))
    };
    Ok(crate::topology::allowlist::cpu_routes_p2p(
        field("ven", 4)? == 2,
        field("fam", 4)?,
    ))
}

/// The socket (physical package) of a NUMA node's first CPU, when sysfs says.
pub(super) fn socket_of_node(root: &Path, node: u32) -> Result<Option<u32>> {
    let list = root.join(format!("devices/system/node/node{node}/cpulist"));
    let Some(text) = attr::optional_text(&list)? else {
        return Ok(None);
    };
    let first = text
        .trim()
        .split([',', '-'])
        .next()
        .filter(|s| !s.is_empty());
    let Some(first) = first else {
        return Ok(None); // a memory-only node
    };
    let cpu: u32 = first
        .parse()
        .map_err(|_| attr::sysfs_err(&list, format!("{:?} is not a CPU list", text.trim())))?;
    let pkg = root.join(format!(
        "devices/system/cpu/cpu{cpu}/topology/physical_package_id"
    ));
    Ok(attr::optional_int(&pkg)?.and_then(|p| u32::try_from(p).ok()))
}

/// A host bridge directory: its (segment, root bus) and path.
pub(super) type HostDir = (u32, u8, PathBuf);

/// The host bridge directories of a sysfs tree: `devices/pci<seg>:<bus>`, and every directory
/// so named on the way to a device that `bus/pci/devices` links to (ARM SoCs and Hyper-V put
/// host bridges deeper, below a platform or VMBus device). A tree with `bus/pci/devices` but no
/// host bridge directory is an error that says which directory is missing.
pub(super) fn host_bridge_dirs(root: &Path) -> Result<Vec<HostDir>> {
    let devices = root.join("devices");
    let listed = super::read_dir(&devices);
    let mut found: Vec<HostDir> = Vec::new();
    for entry in listed.as_deref().unwrap_or_default() {
        if let Some((seg, bus)) = entry_name(entry).and_then(parse_host_bridge_name) {
            found.push((seg, bus, entry.clone()));
        }
    }
    let bus_dir = root.join("bus/pci/devices");
    let mut missing = None;
    let mut copies = 0;
    for link in super::read_dir(&bus_dir).unwrap_or_default() {
        let Ok(target) = std::fs::read_link(&link) else {
            copies += 1;
            continue;
        };
        let Some((seg, bus, dir)) = host_dir_of(root, &link, &target) else {
            continue;
        };
        if !dir.is_dir() {
            missing.get_or_insert((dir, link, target));
        } else if !found.iter().any(|&(s, b, _)| (s, b) == (seg, bus)) {
            found.push((seg, bus, dir));
        }
    }
    if found.is_empty() {
        if let Some((dir, link, target)) = missing {
            let message = format!(
                "missing: {} links to {} below it; copy devices/ with bus/ (p2pctl snapshot \
                 writes both)",
                link.display(),
                target.display()
            );
            return Err(attr::sysfs_err(&dir, message));
        }
        if copies > 0 {
            let message = "holds copies of device directories, not links: which device sits \
                           below which bridge is lost; copy with links kept (cp -a) or use \
                           p2pctl snapshot";
            return Err(attr::sysfs_err(&bus_dir, message));
        }
        listed?;
    }
    found.sort();
    Ok(found)
}

fn entry_name(p: &Path) -> Option<&str> {
    p.file_name()?.to_str()
}

/// The host bridge directory on the way to the device a `bus/pci/devices` link points to.
fn host_dir_of(root: &Path, link: &Path, target: &Path) -> Option<HostDir> {
    let dir = function_dir(root, link, target)?;
    dir.ancestors().find_map(|d| {
        let (seg, bus) = entry_name(d).and_then(parse_host_bridge_name)?;
        Some((seg, bus, d.to_owned()))
    })
}

/// The directory a `bus/pci/devices` link (whose target is `target`) leads to, resolved without
/// following links: a relative target from the link's directory, an absolute one into another
/// sysfs (`/sys/devices/…` in a copied tree) taken below `root/devices`.
pub fn function_dir(root: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    if target.starts_with(root) {
        return Some(lexical(target));
    }
    if target.is_absolute() {
        let mut parts = target
            .components()
            .skip_while(|c| c.as_os_str() != "devices");
        parts.next()?;
        let below: PathBuf = parts.collect();
        return Some(lexical(&root.join("devices").join(below)));
    }
    Some(lexical(&link.parent()?.join(target)))
}

/// A path with `.` and `..` resolved by its text (a `..` after a name removes the name).
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
