//! Facts about host bridges and CPUs that sysfs keeps outside the PCI tree.

use super::attr;
use crate::error::Result;
use std::path::Path;

/// `pci0000:00` → (segment, bus). `None` for names that are not host bridges; an error string
/// for a host bridge this model cannot hold (a VMD domain numbered above 0xffff).
pub(super) fn parse_host_bridge_name(name: &str) -> Option<Result<(u16, u8), String>> {
    let rest = name.strip_prefix("pci")?;
    let (seg, bus) = rest.split_once(':')?;
    let seg = u32::from_str_radix(seg, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    Some(
        u16::try_from(seg)
            .map(|s| (s, bus))
            .map_err(|_| format!("PCI segment {seg:#x} does not fit in 16 bits")),
    )
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
