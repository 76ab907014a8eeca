//! Segments describe exactly the bytes asked for, on every strategy: the first address is the
//! byte at the range's start (in-page offset included) and the lengths add up to the range's
//! length. Checked on the simulated machine by DMA: a pattern written through the segments
//! lands at exactly those bytes of the GPU's memory, and the bytes around them stay as they were.

mod common;

use backend_mock::{Machine, MockConfig};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;

/// Unaligned starts and ends: inside one page, across a page boundary, across several pages.
const RANGES: [(u64, u64); 4] = [
    (0x100, 0x80),
    (0x800, 0x1000),
    (0xff8, 0x10),
    (0x1234, 0x5432),
];

fn check(m: &Machine, p: &Pair, want: Strategy) {
    for (start, len) in RANGES {
        p.gpu.cpu_write(0, &vec![0xee; 8 * 4096]);
        let map = p.map(m, start, len, RW).unwrap();
        assert_eq!(map.strategy().unwrap(), want);
        let segs = map.segments().unwrap();
        assert_eq!(
            segs.iter().map(|s| s.len).sum::<u64>(),
            len,
            "{want} {start:#x}+{len:#x}: {segs:?}"
        );
        let pattern: Vec<u8> = (0..len).map(|i| (i % 253) as u8 + 1).collect();
        let mut done = 0usize;
        for s in &segs {
            let piece = &pattern[done..done + s.len as usize];
            p.nic.dma_write(s.addr, piece).unwrap();
            done += s.len as usize;
        }
        let around = p.gpu.cpu_read(0, 8 * 4096);
        let (s, e) = (start as usize, (start + len) as usize);
        assert_eq!(&around[s..e], &pattern[..], "{want} {start:#x}+{len:#x}");
        assert!(
            around[..s].iter().chain(&around[e..]).all(|&b| b == 0xee),
            "{want} {start:#x}+{len:#x}: a byte outside the range changed"
        );
        drop(map);
    }
}

#[test]
fn direct_segments_are_exact() {
    let m = Machine::new(presets::workstation().unwrap(), &MockConfig::new(60)).unwrap();
    check(&m, &pair(&m, 8, odp()), Strategy::Direct);
    assert!(m.finish().is_empty());
}

#[test]
fn via_iommu_segments_are_exact() {
    let m = Machine::new(presets::acs_switch().unwrap(), &MockConfig::new(61)).unwrap();
    check(&m, &pair(&m, 8, odp()), Strategy::ViaIommu);
    assert!(m.finish().is_empty());
}

#[test]
fn identity_segments_are_exact() {
    let config = MockConfig {
        domain_kind: DomainKind::Identity,
        ..MockConfig::new(62)
    };
    let m = Machine::new(presets::acs_switch().unwrap(), &config).unwrap();
    check(&m, &pair(&m, 8, odp()), Strategy::Identity);
    assert!(m.finish().is_empty());
}

/// A bounce mapping's segments are exactly as long as the range too (their bytes are the bounce
/// buffer's, which a driver copies to and from).
#[test]
fn bounce_segments_are_as_long_as_the_range() {
    let m = Machine::new(presets::acs_switch().unwrap(), &MockConfig::new(63)).unwrap();
    // An importer that cannot take peer memory, and a policy that bounces rather than refuse.
    let p = pair(&m, 8, caps(ImporterFlags::ODP, 64));
    let policy = Policy {
        fallback: Fallback::Bounce,
        ..Policy::default()
    };
    for (start, len) in RANGES {
        let r = range(start, len);
        let map = m
            .negotiator()
            .map(&p.exporter, &p.importer, r, RW, &policy)
            .unwrap();
        assert_eq!(map.strategy().unwrap(), Strategy::Bounce);
        let segs = map.segments().unwrap();
        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), len);
        for s in &segs {
            p.nic.dma_write(s.addr, &vec![1; s.len as usize]).unwrap();
        }
    }
    assert!(m.finish().is_empty());
}
