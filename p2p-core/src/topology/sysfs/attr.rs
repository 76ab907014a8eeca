//! Reading one sysfs attribute: every failure names the file.

use crate::error::{Error, Result};
use crate::topology::limits::{self, MAX_ATTR_BYTES, MAX_CONFIG_BYTES};
use std::io::{ErrorKind, Read};
use std::path::Path;

pub(super) fn sysfs_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Sysfs {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The text of a required attribute (at most [`MAX_ATTR_BYTES`]).
pub(super) fn text(path: &Path) -> Result<String> {
    limits::read_text_capped(path, MAX_ATTR_BYTES, |m| sysfs_err(path, m))
}

/// The text of an optional attribute: `None` when the file does not exist.
pub(super) fn optional_text(path: &Path) -> Result<Option<String>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        _ => text(path).map(Some),
    }
}

/// `0x8086` or `0x060400`, as the kernel prints ids and class codes.
pub(super) fn parse_hex(path: &Path, text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .ok_or_else(|| sysfs_err(path, format!("{t:?} is not a 0x-prefixed hex number")))?;
    u64::from_str_radix(digits, 16)
        .map_err(|_| sysfs_err(path, format!("{t:?} is not a hex number")))
}

/// A required hex attribute that must fit in `bits` bits.
pub(super) fn hex(path: &Path, bits: u32) -> Result<u64> {
    let v = parse_hex(path, &text(path)?)?;
    if bits < 64 && v >> bits != 0 {
        return Err(sysfs_err(
            path,
            format!("{v:#x} does not fit in {bits} bits"),
        ));
    }
    Ok(v)
}

/// An optional decimal attribute (`numa_node` is -1 when unknown).
pub(super) fn optional_int(path: &Path) -> Result<Option<i64>> {
    optional_text(path)?
        .map(|t| {
            t.trim()
                .parse::<i64>()
                .map_err(|_| sysfs_err(path, format!("{:?} is not a number", t.trim())))
        })
        .transpose()
}

/// The bytes of `config` that this process may read, and the size the kernel gives the file.
/// A file larger than PCIe's 4096 bytes of configuration space is not a `config` file: refused
/// with [`Error::InputLimit`] before it is read.
pub(super) fn config_bytes(path: &Path) -> Result<Option<(Vec<u8>, usize)>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(sysfs_err(path, format!("cannot open: {e}"))),
    };
    let too_large = || {
        limits::exceeded(
            &path.display().to_string(),
            None,
            "configuration space in bytes",
            MAX_CONFIG_BYTES,
        )
    };
    let full = f
        .metadata()
        .map_err(|e| sysfs_err(path, format!("cannot stat: {e}")))?
        .len();
    if full > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(full as usize);
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| sysfs_err(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    Ok(Some((bytes, full as usize)))
}

/// One line of a `resource` file: start, end and flags of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Resource {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    /// Its line in the file (from 1), for messages.
    pub line: usize,
}

/// `IORESOURCE_MEM` in a resource's flags.
pub(super) const IORESOURCE_MEM: u64 = 0x200;
/// `IORESOURCE_DISABLED | IORESOURCE_UNSET`: a region with no address assigned.
const IORESOURCE_NOT_ASSIGNED: u64 = 0x1000_0000 | 0x2000_0000;

impl Resource {
    /// Whether this is an assigned memory region.
    pub fn is_memory(&self) -> bool {
        self.flags & IORESOURCE_MEM != 0
            && self.flags & IORESOURCE_NOT_ASSIGNED == 0
            && self.end > self.start
    }

    /// Its size in bytes; `None` for `0x0 0xffffffffffffffff`, whose 2^64 bytes no u64 holds.
    pub fn len(&self) -> Option<u64> {
        (self.end - self.start).checked_add(1)
    }
}

/// Parses `resource`: one `0x%016llx 0x%016llx 0x%016llx` line per region (BARs 0–5, the ROM,
/// then bridge windows and SR-IOV BARs).
pub(super) fn resources(path: &Path) -> Result<Vec<Resource>> {
    text(path)?
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != 3 {
                return Err(sysfs_err(
                    path,
                    format!(
                        "line {}: {line:?} does not hold start, end and flags",
                        i + 1
                    ),
                ));
            }
            let num = |s: &str| {
                parse_hex(path, s).map_err(|_| {
                    sysfs_err(path, format!("line {}: {s:?} is not a hex number", i + 1))
                })
            };
            let r = Resource {
                start: num(fields[0])?,
                end: num(fields[1])?,
                flags: num(fields[2])?,
                line: i + 1,
            };
            if r.end < r.start {
                return Err(sysfs_err(
                    path,
                    format!(
                        "line {}: end {:#x} lies before start {:#x}",
                        i + 1,
                        r.end,
                        r.start
                    ),
                ));
            }
            Ok(r)
        })
        .collect()
}
