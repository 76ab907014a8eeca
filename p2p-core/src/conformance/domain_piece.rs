//! [`IommuDomain::map_piece`]: a piece maps as `map_attrs` would, whether or not it carries the
//! file its memory is in.

use super::scratch::{Scratch, RW};
use super::suite::DomainConfig;
use super::Violation;
use crate::addr::Iova;
use crate::error::Error;
use crate::traits::{FileSlice, IommuDomain, MapAttrs, MapPiece};

const PIECE: &str = "IommuDomain::map_piece maps like map_attrs: the piece translates to its \
                     phys, a second map over it is AlreadyMapped, unmap returns its length";

/// One piece with `file`, at the first page of [`DomainConfig::phys`].
fn check_piece(
    d: &dyn IommuDomain,
    cfg: &DomainConfig,
    file: Option<FileSlice>,
) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(2 * pg)?.0;
    s.rule(PIECE);
    let by = if file.is_some() {
        "by file"
    } else {
        "by address"
    };
    let piece = MapPiece {
        phys: s.phys(0),
        len: pg,
        attrs: MapAttrs::empty(),
        file,
    };
    s.call(format!(
        "map_piece({w:#x}, {pg:#x} bytes at {} {by})",
        piece.phys
    ));
    d.map_piece(Iova(w), &piece, RW)
        .map_err(|e| s.fail(format!("the map failed: {e}")))?;
    s.expect_phys(w, piece.phys, RW)?;
    s.expect_none(w + pg, "past the piece")?;
    s.call(format!("map_piece({w:#x}) again"));
    s.expect_err(
        d.map_piece(Iova(w), &piece, RW),
        |e| matches!(e, Error::AlreadyMapped(_)),
        "AlreadyMapped",
    )?;
    s.unmap(w, pg, pg)?;
    s.expect_none(w, "after the unmap")?;
    s.finish();
    Ok(())
}

/// A piece known by address only maps and unmaps as `map_attrs` does (in the suite every
/// translated domain runs).
pub fn check_map_piece(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    check_piece(d, cfg, None)
}

/// The same with a piece that carries `file`, which must hold the memory at
/// [`DomainConfig::phys`] (its offset is that byte's). Domains that map by file (iommufd) run
/// it with a file their kernel accepts; the others ignore the file, and must still map the
/// piece by its address.
pub fn check_map_by_file(
    d: &dyn IommuDomain,
    cfg: &DomainConfig,
    file: FileSlice,
) -> Result<(), Violation> {
    check_piece(d, cfg, Some(file))
}
