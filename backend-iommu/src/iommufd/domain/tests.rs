//! The domain against a model of iommufd's IOAS rules (no kernel needed): maps reach the kernel
//! by virtual address or by file with the right address or offset, the kernel's refusals come
//! back typed, unmap hands the kernel only what the trait promises, and after any sequence of
//! calls, from any number of threads, the domain's record is exactly what the kernel holds.

use super::*;
use p2p_core::rand::SplitMix64;
use p2p_core::traits::ReservedKind;
use proptest::prelude::*;
use std::fs::File;

mod fake;
use fake::{file, slice, FakeIoas, Source, VTD};

/// (phys, va, len): memory mapped in this process.
const VA_WINDOW: (u64, u64, u64) = (0x1000_0000, 0x7f00_0000_0000, 0x40_0000);
/// (phys, file offset, len): a memfd's or a dma-buf's pages.
const FILE_WINDOW: (u64, u64, u64) = (0x8_0000_0000, 0x1_0000, 0x10_0000);
/// Pieces that carry their own file: phys `PIECE_PHYS + k` is at offset `PIECE_OFF + k`.
const PIECE_PHYS: u64 = 0x40_0000_0000;
const PIECE_OFF: u64 = 0x100_0000;

struct Setup {
    d: IommufdDomain,
    fake: Arc<FakeIoas>,
    /// The file window's file.
    wfile: Arc<File>,
    /// The file of pieces mapped with their file.
    pfile: Arc<File>,
}

fn setup_with(fake: FakeIoas) -> Setup {
    let fake = Arc::new(fake);
    let d = IommufdDomain::over(fake.clone()).unwrap();
    let (phys, va, len) = VA_WINDOW;
    d.add_window(VirtAddr(va), PhysAddr(phys), len).unwrap();
    let wfile = file();
    let (phys, offset, len) = FILE_WINDOW;
    d.add_file_window(slice(&wfile, offset), PhysAddr(phys), len)
        .unwrap();
    Setup {
        d,
        fake,
        wfile,
        pfile: file(),
    }
}

fn setup() -> Setup {
    setup_with(FakeIoas::vtd())
}

impl Setup {
    /// Maps by the window holding `phys`.
    fn map(&self, iova: u64, phys: u64, len: u64) -> Result<()> {
        self.d.map(Iova(iova), PhysAddr(phys), len, RW)
    }

    /// Maps the piece `k` bytes into the pieces' file.
    fn map_piece(&self, iova: u64, k: u64, len: u64) -> Result<()> {
        self.d.map_piece(Iova(iova), &self.piece(k, len), RW)
    }

    fn phys_at(&self, iova: u64) -> Option<u64> {
        self.d.translate(Iova(iova)).map(|t| t.phys.0)
    }

    /// A piece `k` bytes into the pieces' file.
    fn piece(&self, k: u64, len: u64) -> MapPiece {
        MapPiece {
            file: Some(slice(&self.pfile, PIECE_OFF + k)),
            ..MapPiece::at(PhysAddr(PIECE_PHYS + k), len, MapAttrs::MMIO)
        }
    }

    /// The source the kernel must have been given for `phys` (in a window or a piece).
    fn source_of(&self, phys: u64) -> Source {
        let ((vp, va, vl), (fp, fo, fl)) = (VA_WINDOW, FILE_WINDOW);
        if (vp..vp + vl).contains(&phys) {
            Source::Va(va + (phys - vp))
        } else if (fp..fp + fl).contains(&phys) {
            Source::File(slice(&self.wfile, fo + (phys - fp)))
        } else {
            Source::File(slice(&self.pfile, PIECE_OFF + (phys - PIECE_PHYS)))
        }
    }

    /// The physical address the kernel's area maps `iova` to, derived from its source.
    fn kernel_phys(&self, iova: u64) -> Option<u64> {
        let areas = self.fake.areas.lock();
        let (&a, (l, src)) = areas.range(..=iova).next_back()?;
        let off = iova - a;
        (off < *l).then(|| match src {
            Source::Va(va) => VA_WINDOW.0 + (va - VA_WINDOW.1) + off,
            Source::File(f) if Arc::ptr_eq(&f.file, &self.wfile) => {
                FILE_WINDOW.0 + (f.offset - FILE_WINDOW.1) + off
            }
            Source::File(f) => PIECE_PHYS + (f.offset - PIECE_OFF) + off,
        })
    }

    /// Domain and kernel agree on every page of `[base, base + pages * 4 KiB)`.
    fn agree(&self, base: u64, pages: u64) -> std::result::Result<(), String> {
        for iova in (base..base + pages * 0x1000).step_by(0x1000) {
            let (dom, ker) = (self.phys_at(iova), self.kernel_phys(iova));
            if dom != ker {
                return Err(format!("iova {iova:#x}: domain {dom:?}, kernel {ker:x?}"));
            }
        }
        Ok(())
    }
}

const RW: Access = Access::READ.union(Access::WRITE);

/// An error's variant name (`NotRegistered`), or "Ok".
fn variant<T>(r: &Result<T>) -> String {
    let e = format!("{:?}", r.as_ref().err());
    let name = e.trim_start_matches("Some(").split([' ', '(', '{']).next();
    name.unwrap_or_default().replace("None", "Ok")
}

/// An OS error's call and errno.
fn os<T>(r: Result<T>) -> Option<(&'static str, Option<i32>)> {
    match r {
        Err(Error::Os { call, errno, .. }) => Some((call, errno)),
        _ => None,
    }
}

#[test]
fn ranges_become_aperture_and_reserved_regions() {
    let Setup { d, .. } = setup();
    assert_eq!(d.kind(), DomainKind::Translated);
    assert_eq!(d.page_sizes(), PageSizes::SIZE_4K);
    assert_eq!(d.aperture(), AddrRange::new(Iova(0), 1 << 39).unwrap());
    let msi = AddrRange::new(Iova(0xfee0_0000), 0x10_0000).unwrap();
    let r = d.reserved_regions();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].kind, r[0].range), (ReservedKind::Msi, msi));
    // A 28-bit limit is honoured: 1 MiB at a time until the space under it is spent.
    let mut n = 0;
    while let Ok(i) = d.alloc_iova(0x10_0000, (1 << 28) - 1) {
        assert!(i.0 >= 0x1000 && i.0 + 0x10_0000 <= 1 << 28, "{i}");
        n += 1;
    }
    assert_eq!(n, 255, "1 MiB ranges from 4 KiB up to 256 MiB");
    // Around the MSI window, 1 MiB at a time until none is left: all 31 around it, none in it.
    let around = [(0xfe00_0000, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff)];
    let d = IommufdDomain::over(Arc::new(FakeIoas::new(&around, 4096))).unwrap();
    assert_eq!(d.reserved_regions()[0].kind, ReservedKind::Msi);
    let mut n = 0;
    while let Ok(i) = d.alloc_iova(0x10_0000, u64::MAX) {
        let r = AddrRange::new(i, 0x10_0000).unwrap();
        assert!(!r.overlaps(&msi) && d.aperture().contains_range(&r), "{r}");
        n += 1;
    }
    assert_eq!(n, 31);
}

#[test]
fn maps_reach_the_kernel_by_address_or_by_file() {
    let s = setup();
    // By virtual address: the window's VA plus the offset in it.
    s.map(0x20_0000, 0x1000_3000, 0x2000).unwrap();
    let va = Source::Va(0x7f00_0000_3000);
    assert_eq!(s.fake.areas(), [(0x20_0000, 0x2000, va)]);
    let t = s.d.translate(Iova(0x20_1004)).unwrap();
    assert_eq!((t.phys, t.access), (PhysAddr(0x1000_4004), RW));
    // Through a file window: its file, at the window's offset plus the offset in it.
    s.map(0x30_0000, 0x8_0000_5000, 0x1000).unwrap();
    let by_window = Source::File(slice(&s.wfile, 0x1_5000));
    assert_eq!(s.fake.areas()[1], (0x30_0000, 0x1000, by_window));
    assert_eq!(s.phys_at(0x30_0ff8), Some(0x8_0000_5ff8));
    // A piece with its file goes by that file, even where a VA window covers its phys.
    let mut piece = s.piece(0x7000, 0x3000);
    s.d.map_piece(Iova(0x50_0000), &piece, Access::READ)
        .unwrap();
    piece.phys = PhysAddr(0x1000_8000);
    s.d.map_piece(Iova(0x60_0000), &piece, RW).unwrap();
    let by_piece = Source::File(slice(&s.pfile, PIECE_OFF + 0x7000));
    let areas = s.fake.areas();
    assert_eq!(areas[2], (0x50_0000, 0x3000, by_piece.clone()));
    assert_eq!(areas[3], (0x60_0000, 0x3000, by_piece));
    let t = s.d.translate(Iova(0x50_2008)).unwrap();
    assert_eq!((t.phys.0, t.access), (PIECE_PHYS + 0x9008, Access::READ));
    assert_eq!(s.phys_at(0x60_0000), Some(0x1000_8000));
    // map_pieces: one MAP_FILE a piece; a clash on the third unmaps the first two.
    let pieces = [s.piece(0x10_0000, 0x1000), s.piece(0x20_0000, 0x2000)];
    s.d.map_pieces(Iova(0x70_0000), &pieces, RW).unwrap();
    assert_eq!(s.fake.areas().len(), 6);
    assert_eq!(s.phys_at(0x70_1000), Some(PIECE_PHYS + 0x20_0000));
    let clash = [pieces[0].clone(), pieces[1].clone(), s.piece(0, 0x1000)];
    assert!(s.d.map_pieces(Iova(0x6f_d000), &clash, RW).is_err());
    assert_eq!(s.fake.areas().len(), 6);
    assert_eq!(s.phys_at(0x6f_d000), None);
}

#[test]
fn a_piece_with_its_file_needs_no_window() {
    let d = IommufdDomain::over(Arc::new(FakeIoas::vtd())).unwrap();
    let file = Some(slice(&file(), 0x7000));
    let bare = MapPiece::at(PhysAddr(PIECE_PHYS), 0x2000, MapAttrs::MMIO);
    let piece = MapPiece {
        file,
        ..bare.clone()
    };
    d.map_piece(Iova(0x10_0000), &piece, RW).unwrap();
    let t = d.translate(Iova(0x10_1010)).map(|t| t.phys.0);
    assert_eq!(t, Some(PIECE_PHYS + 0x1010));
    // Without its file the same piece is in no window.
    let got = d.map_piece(Iova(0x20_0000), &bare, RW);
    assert_eq!(
        got,
        Err(Error::NotRegistered {
            phys: PIECE_PHYS,
            len: 0x2000
        })
    );
}

#[test]
fn refusals_are_typed_and_reach_no_kernel() {
    let s = setup();
    s.map(0x20_0000, 0x1000_0000, 0x2000).unwrap();
    let got = s.map(0x40_0000, 0x5000_0000, 0x1000);
    assert_eq!(
        got,
        Err(Error::NotRegistered {
            phys: 0x5000_0000,
            len: 0x1000
        })
    );
    assert_eq!(
        s.map(0x20_1000, 0x1000_4000, 0x1000),
        Err(Error::AlreadyMapped(0x20_1000))
    );
    for (iova, phys, len, want) in [
        (0x40_0000, 0x103f_f000, 0x2000, "NotRegistered"), // across the VA window's end
        (0x40_0000, 0x8_000f_f000, 0x2000, "NotRegistered"), // the file window's
        (0x1f_f000, 0x1000_4000, 0x2000, "AlreadyMapped"),
        (0xfee0_0000, 0x1000_4000, 0x1000, "Reserved"),
        (0xfedf_f000, 0x1000_4000, 0x2000, "Reserved"),
        (0x40_0800, 0x1000_4000, 0x1000, "Misaligned"),
        (0x40_0000, 0x1000_4000, 0x800, "Misaligned"),
        (1 << 39, 0x1000_4000, 0x1000, "OutOfBounds"),
        ((1 << 39) - 0x1000, 0x1000_4000, 0x2000, "OutOfBounds"),
    ] {
        let got = s.map(iova, phys, len);
        assert_eq!(
            variant(&got),
            want,
            "map({iova:#x}, {phys:#x}, {len:#x}): {got:?}"
        );
    }
    // A piece over a live map is refused before the kernel sees it.
    assert_eq!(variant(&s.map_piece(0x20_1000, 0, 0x1000)), "AlreadyMapped");
    assert_eq!(s.fake.areas().len(), 1);
    // Windows may not overlap, and a file window's offsets may not wrap.
    let got =
        s.d.add_file_window(slice(&s.wfile, 0), PhysAddr(0x1000_1000), 0x1000);
    assert_eq!(variant(&got), "WindowOverlap");
    let wraps = slice(&s.wfile, u64::MAX - 0xfff);
    let got = s.d.add_file_window(wraps, PhysAddr(1 << 45), 0x2000);
    assert_eq!(variant(&got), "AddressOverflow");
}

#[test]
fn kernel_refusals_are_os_errors_with_their_errno() {
    // iommufd refuses a BAR's virtual address with EFAULT.
    let s = setup_with(FakeIoas {
        refuse_va: Some(libc::EFAULT),
        ..FakeIoas::vtd()
    });
    let e = s.map(0x1000, 0x1000_0000, 0x1000).unwrap_err();
    let msg = "IOMMU_IOAS_MAP on iova 0x1000+0x1000 failed";
    assert!(e.to_string().contains(msg), "{e}");
    assert_eq!(
        os::<()>(Err(e)),
        Some(("IOMMU_IOAS_MAP", Some(libc::EFAULT)))
    );
    // Nothing recorded: the IOVA is free for a map by file.
    assert_eq!(s.phys_at(0x1000), None);
    s.map(0x1000, 0x8_0000_0000, 0x1000).unwrap();
    // An area made outside this domain (another user of the IOAS): the domain allows the map,
    // the kernel refuses it with EEXIST, and the domain records nothing.
    let other = (0x3000, Source::Va(0x1234_5000));
    s.fake.areas.lock().insert(0x10_0000, other);
    let got = s.map_piece(0x10_2000, 0, 0x2000);
    assert_eq!(os(got), Some(("IOMMU_IOAS_MAP_FILE", Some(libc::EEXIST))));
    assert_eq!(s.phys_at(0x10_2000), None);
    // An unmap cutting a map is refused before the kernel is asked, and it stays mapped.
    s.map(0x20_0000, 0x8_0000_1000, 0x2000).unwrap();
    let got = s.d.unmap(Iova(0x20_0000), 0x1000);
    assert!(
        matches!(
            got,
            Err(Error::WouldSplit {
                page_start: 0x20_0000,
                page_size: 0x2000,
                ..
            })
        ),
        "{got:?}"
    );
    assert_eq!(s.fake.areas().len(), 3);
    s.agree(0x20_0000, 2).unwrap();
}

/// An unmap across a hole reaches the kernel only for the run before the hole: what lies after
/// it stays mapped in the kernel too (IOMMU_IOAS_UNMAP would remove it).
#[test]
fn unmap_passes_the_kernel_only_the_run_before_a_hole() {
    let s = setup();
    s.map(0x10_0000, 0x1000_0000, 0x1000).unwrap();
    s.map(0x10_1000, 0x8_0000_0000, 0x1000).unwrap();
    s.map_piece(0x10_3000, 0, 0x1000).unwrap();
    assert_eq!(s.d.unmap(Iova(0x10_0000), 0x4000), Ok(0x2000));
    let left = Source::File(slice(&s.pfile, PIECE_OFF));
    assert_eq!(s.fake.areas(), [(0x10_3000, 0x1000, left)]);
    // Nothing mapped at the start: 0, without asking the kernel (which would say ENOENT).
    assert_eq!(s.d.unmap(Iova(0x10_2000), 0x2000), Ok(0));
    assert_eq!(s.d.unmap(Iova(0x10_3000), 0x1000), Ok(0x1000));
    assert!(s.fake.areas().is_empty());
    s.agree(0x10_0000, 4).unwrap();
}

/// Linux's `iopt_unmap_iova_range` removes the areas in IOVA order and fails with ENOENT at the
/// first one that straddles the range's end: those before it are gone from the kernel. So an
/// unmap the trait refuses must not reach the kernel at all: it would leave the record and the
/// kernel disagreeing (this failed before the domain refused straddles itself).
#[test]
fn a_refused_unmap_leaves_the_kernel_as_the_record_says() {
    let s = setup_with(FakeIoas::new(&VTD, 4096));
    s.map(0x10_0000, 0x1000_0000, 0x1000).unwrap();
    s.map(0x10_1000, 0x1000_1000, 0x2000).unwrap();
    assert!(s.d.unmap(Iova(0x10_0000), 0x2000).is_err());
    s.agree(0x10_0000, 3).unwrap();
    assert_eq!(
        s.fake.areas().len(),
        2,
        "the trait's refusal unmaps nothing"
    );
}

#[derive(Debug, Clone)]
enum Op {
    /// (page, pages, how, off). `how`: 0 the VA window, 1 the file window, 2 a piece with its
    /// file, 3 in no window.
    Map(u64, u64, u8, u64),
    /// (page, pages).
    Unmap(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..64, 1u64..8, 0u8..4, 0u64..300).prop_map(|(p, n, how, off)| Op::Map(p, n, how, off)),
        (0u64..64, 1u64..16).prop_map(|(p, n)| Op::Unmap(p, n)),
    ]
}

proptest! {
    /// Model: the live maps (iova, len, phys). After every step the domain answers as the model
    /// says, the kernel holds exactly the model's areas with the source each phys must have
    /// reached it by, and translate answers exactly for mapped pages.
    #[test]
    fn the_domain_follows_iommufd(ops in proptest::collection::vec(op(), 1..60)) {
        let s = setup();
        let mut model: Vec<(u64, u64, u64)> = Vec::new();
        let base = 0x100_0000u64;
        for op in ops {
            match op {
                Op::Map(page, pages, how, off) => {
                    let (iova, len) = (base + page * 0x1000, pages * 0x1000);
                    let (phys, fits) = match how {
                        0 => (VA_WINDOW.0 + off * 0x1000, off + pages <= 0x400),
                        1 => (FILE_WINDOW.0 + off * 0x1000, off + pages <= 0x100),
                        2 => (PIECE_PHYS + off * 0x1000, true),
                        _ => (0x3000_0000, false),
                    };
                    let overlaps = model.iter().any(|&(a, l, _)| a < iova + len && iova < a + l);
                    let r = if how == 2 {
                        s.map_piece(iova, off * 0x1000, len)
                    } else {
                        s.map(iova, phys, len)
                    };
                    match &r {
                        Ok(()) => prop_assert!(fits && !overlaps),
                        Err(Error::AlreadyMapped(_)) => prop_assert!(overlaps),
                        Err(Error::NotRegistered { .. }) => prop_assert!(!fits && !overlaps),
                        Err(e) => return Err(TestCaseError::fail(format!("map: {e}"))),
                    }
                    if r.is_ok() {
                        model.push((iova, len, phys));
                    }
                }
                Op::Unmap(page, pages) => {
                    let (iova, len) = (base + page * 0x1000, pages * 0x1000);
                    let end = iova + len;
                    // The trait's unmap: the run of back-to-back maps from iova, up to the
                    // first hole; a map cut by the start or by the run's end refuses it all.
                    let mut cut = model.iter().any(|&(a, l, _)| a < iova && iova < a + l);
                    let mut at = iova;
                    while let Some(&(_, l, _)) = model.iter().find(|&&(a, _, _)| a == at && a < end) {
                        cut |= at + l > end;
                        at += l;
                    }
                    let r = s.d.unmap(Iova(iova), len);
                    if cut {
                        prop_assert!(r.is_err(), "{:?}", r);
                    } else {
                        prop_assert_eq!(r.ok(), Some(at - iova));
                        model.retain(|&(a, _, _)| !(a >= iova && a < at));
                    }
                }
            }
            model.sort_unstable();
            let want: Vec<_> = model.iter().map(|&(a, l, p)| (a, l, s.source_of(p))).collect();
            prop_assert_eq!(s.fake.areas(), want);
            for page in 0..80u64 {
                let iova = base + page * 0x1000;
                let want = model.iter().find(|&&(a, l, _)| iova >= a && iova < a + l)
                    .map(|&(a, _, p)| p + (iova - a));
                prop_assert_eq!(s.phys_at(iova), want);
            }
        }
    }
}

#[test]
fn malformed_iova_ranges_are_typed_errors_not_panics() {
    let over = |ranges: &[(u64, u64)], alignment| {
        IommufdDomain::over(Arc::new(FakeIoas::new(ranges, alignment)))
    };
    for ranges in [
        &[][..],
        &[(0x2000, 0x1000)],
        &[(0, 0xffff), (0x8000, 0x1_ffff)],
        &[(0x10_0000, 0x1f_ffff), (0, 0xffff)],
        &[(0, u64::MAX), (0, u64::MAX)],
    ] {
        let got = over(ranges, 4096);
        assert_eq!(variant(&got), "KernelReply", "{ranges:x?}: {got:?}");
    }
    for alignment in [0, 3, 0x1800, 0x2000, 1 << 63, u64::MAX] {
        let got = over(&VTD, alignment);
        assert_eq!(variant(&got), "KernelReply", "{alignment:#x}: {got:?}");
    }
    for alignment in [1, 0x200, 0x1000] {
        over(&VTD, alignment).unwrap_or_else(|e| panic!("{alignment:#x}: {e}"));
    }
    let whole = over(&[(0, u64::MAX)], 4096).unwrap();
    assert_eq!(whole.aperture().start(), Iova(0));
    // Usable ranges that do not start on a page: allocations stay aligned and usable.
    let d = over(&[(0x1800, 0xf_ffff), (0x20_0800, 0x2f_ffff)], 0x800).unwrap();
    for len in [0x1000, 0x2000, 0x1000, 0x4000, 0x1000] {
        let i = d.alloc_iova(len, u64::MAX).unwrap().0;
        let usable = [(0x1800, 0xf_ffff), (0x20_0800, 0x2f_ffff)];
        let inside = usable.iter().any(|&(s, l)| s <= i && i + len - 1 <= l);
        assert!(i % len == 0 && inside, "{i:#x}+{len:#x}");
    }
}

/// The conformance stress check over the iommufd model: the low half of the physical space the
/// mappers use is mapped by address, the high half (thread 2's pages) by file.
#[test]
fn the_domain_passes_the_concurrent_stress_check_over_the_iommufd_model() {
    use p2p_core::conformance::{stress_domain, StressConfig};
    for seed in 0..3 {
        let fake = Arc::new(FakeIoas::vtd());
        let d = Arc::new(IommufdDomain::over(fake.clone()).unwrap());
        d.add_window(VirtAddr(0x7f00_0000_0000), PhysAddr(0), 1 << 38)
            .unwrap();
        d.add_file_window(slice(&file(), 0), PhysAddr(1 << 38), 3 << 38)
            .unwrap();
        let report = stress_domain(d, &StressConfig::quick(seed)).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.maps > 0, "seed {seed}: {report:?}");
        assert_eq!(
            fake.areas(),
            [],
            "seed {seed}: the IOAS still maps something"
        );
    }
}

/// A conformance domain whose 16 MiB scratch memory is registered by address or by file.
fn conformance_domain(by_file: bool) -> Arc<dyn IommuDomain> {
    let d = match IommufdDomain::over(Arc::new(FakeIoas::vtd())) {
        Ok(d) => d,
        Err(e) => panic!("IommufdDomain::over: {e}"),
    };
    let phys = p2p_core::conformance::DomainConfig::strict().phys;
    let span = p2p_core::conformance::PHYS_SPAN;
    let added = if by_file {
        d.add_file_window(slice(&file(), 0x1000), phys, span)
    } else {
        d.add_window(VirtAddr(0x7f20_0000_0000), phys, span)
    };
    added.unwrap_or_else(|e| panic!("window: {e}"));
    Arc::new(d)
}

/// Every translated-domain check of the suite passes over the model, each on a fresh domain,
/// with the scratch memory mapped by address and by file.
#[test]
fn conformance_iommufd_domain_over_the_model() {
    use p2p_core::conformance::{check_domain_with, DomainConfig};
    let cfg = DomainConfig::strict();
    for by_file in [false, true] {
        check_domain_with(|| conformance_domain(by_file), &cfg)
            .unwrap_or_else(|v| panic!("by file {by_file}: {v}"));
    }
    let piece_file = FileSlice {
        file: file(),
        offset: 0,
    };
    p2p_core::conformance::check_map_by_file(&*conformance_domain(false), &cfg, piece_file)
        .unwrap_or_else(|v| panic!("a piece with its file: {v}"));
}

/// Several threads map (by address, file window and piece file) and unmap overlapping ranges,
/// some cutting maps, some across holes; after they join, the domain's record and the kernel's
/// areas are the same maps: every page translates alike, and each kernel area is unmapped
/// whole by one domain unmap (so the record has the same boundaries).
#[test]
fn after_racing_maps_and_unmaps_the_record_is_the_kernel() {
    const BASE: u64 = 0x100_0000;
    const PAGES: u64 = 64;
    for seed in 0..6u64 {
        let s = setup();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let s = &s;
                scope.spawn(move || {
                    let mut rng = SplitMix64::new(seed.wrapping_mul(1000).wrapping_add(t));
                    for _ in 0..300 {
                        let iova = BASE + rng.below(PAGES) * 0x1000;
                        let len = (1 + rng.below(6)) * 0x1000;
                        let off = rng.below(0xf0) * 0x1000;
                        if rng.below(5) < 3 {
                            let r = match rng.below(3) {
                                0 => s.map(iova, VA_WINDOW.0 + off, len),
                                1 => s.map(iova, FILE_WINDOW.0 + off, len),
                                _ => s.map_piece(iova, off, len),
                            };
                            assert!(
                                ["Ok", "AlreadyMapped"].contains(&&*variant(&r)),
                                "seed {seed} thread {t}: map({iova:#x}, {len:#x}): {r:?}"
                            );
                        } else {
                            let r = s.d.unmap(Iova(iova), len);
                            assert!(
                                r.is_ok() || matches!(r, Err(Error::WouldSplit { .. })),
                                "seed {seed} thread {t}: unmap({iova:#x}, {len:#x}): {r:?}"
                            );
                        }
                    }
                });
            }
        });
        s.agree(BASE, PAGES + 8)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (iova, len, _) in s.fake.areas() {
            let got = s.d.unmap(Iova(iova), len);
            assert_eq!(
                got,
                Ok(len),
                "seed {seed}: unmap of the kernel's area {iova:#x}+{len:#x}"
            );
        }
        assert!(s.fake.areas().is_empty(), "seed {seed}");
        s.agree(BASE, PAGES + 8)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}
