//! How much input the readers accept. Every reader (the JSON file, NCCL XML, sysfs attributes and
//! directories, configuration space) checks these before it reads or recurses, so a hostile or
//! broken input ends in [`Error::InputLimit`] instead of exhausting memory or the stack.
//!
//! The numbers are far above anything real: a PCI segment has 256 buses (so no hierarchy is
//! deeper than 256 bridges, and real ones stop near ten), 256 functions per bus, 4096 bytes of
//! configuration space per function; NCCL topology files of the largest servers are tens of
//! kilobytes.

// The checking helpers serve the readers, each only some of them: a build without all three
// keeps the limits (public numbers) and leaves some helpers unused.
#![cfg_attr(
    not(all(feature = "sysfs", feature = "nccl", feature = "json")),
    allow(dead_code)
)]

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The largest topology file (JSON or NCCL XML) read, in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The largest sysfs attribute read, in bytes (`resource` of a bridge with SR-IOV is about 1 KiB).
pub const MAX_ATTR_BYTES: u64 = 64 << 10;

/// The most configuration space read, in bytes (PCIe extended configuration space).
pub const MAX_CONFIG_BYTES: u64 = 4096;

/// The deepest tree accepted: bridges and ports between a host bridge and an endpoint. Readers
/// recurse once per level, so this also bounds their stack.
pub const MAX_DEPTH: u32 = 64;

/// The most entries read from one sysfs directory (a bus holds at most 256 functions; a device
/// directory holds a few dozen attributes).
pub const MAX_DIR_ENTRIES: usize = 65_536;

/// The most XML nodes (elements, text, attributes' nodes) parsed from one NCCL file.
pub const MAX_XML_NODES: u32 = 1 << 20;

/// An [`Error::InputLimit`].
pub(crate) fn exceeded(path: &str, line: Option<u32>, what: &'static str, limit: u64) -> Error {
    Error::InputLimit {
        path: path.to_owned(),
        line,
        what,
        limit,
    }
}

/// Checks a tree depth against [`MAX_DEPTH`]. `line` is asked only on failure: finding a line
/// in a document can cost a scan of it.
pub(crate) fn check_depth(
    depth: u32,
    path: &str,
    line: impl FnOnce() -> Option<u32>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(exceeded(
            path,
            line(),
            "nesting depth",
            u64::from(MAX_DEPTH),
        ));
    }
    Ok(())
}

/// Reads at most `cap` bytes of a file: `Ok(None)` when it holds more. The size the file claims
/// is checked first (nothing is read from a file that says it is too large), and the read itself
/// is bounded, since procfs and some sysfs files report a size of 0 or one page whatever they
/// hold.
pub(crate) fn read_capped(path: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > cap {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

/// [`read_capped`] as UTF-8 text, with errors made by `err` (which names the file its reader's
/// way) and [`Error::InputLimit`] for a file above the cap.
pub(crate) fn read_text_capped(
    path: &Path,
    cap: u64,
    err: impl Fn(String) -> Error,
) -> Result<String> {
    let bytes = read_capped(path, cap)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .ok_or_else(|| exceeded(&path.display().to_string(), None, "file size in bytes", cap))?;
    String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "not UTF-8 text (byte {} is invalid)",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_above_the_cap_is_refused_and_one_at_it_is_read() {
        let dir = std::env::temp_dir().join(format!("p2pdma-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, vec![b'a'; 100]).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().map(|b| b.len()), Some(100));
        assert_eq!(read_capped(&p, 99).unwrap(), None);
        let err = read_text_capped(&p, 10, Error::InvalidTopology).unwrap_err();
        assert!(
            matches!(err, Error::InputLimit { limit: 10, .. }),
            "{err:?}"
        );
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let err = read_text_capped(&p, 10, Error::InvalidTopology).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn depth_is_checked_against_the_limit() {
        assert!(check_depth(MAX_DEPTH, "f", || Some(1)).is_ok());
        let err = check_depth(MAX_DEPTH + 1, "f.xml", || Some(7)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("f.xml:7: nesting depth exceeds the limit of {MAX_DEPTH}")
        );
    }
}
