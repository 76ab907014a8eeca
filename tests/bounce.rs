//! Bounce mappings are usable: the buffer is exposed and `sync_for_device` / `sync_for_cpu`
//! copy between it and the exporter's memory (Linux's `dma_sync_single_for_*`).

mod common;

use backend_mock::Machine;
use common::*;
use p2pdma::prelude::*;

fn workstation(seed: u64) -> Machine {
    Machine::new(
        p2pdma::core::topology::presets::workstation().unwrap(),
        &collect(seed),
    )
    .unwrap()
}

fn bounce_policy() -> Policy {
    Policy {
        fallback: Fallback::Bounce,
        ..Policy::default()
    }
}

/// A 32-bit NIC without ODP cannot reach a GPU BAR above 4 GiB: it writes and reads the GPU's
/// memory through a bounce buffer, with the syncs doing the copies.
#[test]
fn a_32_bit_nic_reads_and_writes_gpu_memory_through_the_bounce() {
    let m = workstation(131);
    let p = pair(&m, 8, caps(ImporterFlags::P2P, 32));
    // Unaligned on both ends, so the copy offsets are checked too.
    let r = range(0x1234, 0x3000);
    let map = m
        .negotiator()
        .map(&p.exporter, &p.importer, r, RW, &bounce_policy())
        .unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::Bounce);
    let bounce = map
        .bounce()
        .unwrap()
        .expect("a bounce mapping has a buffer");
    assert_eq!(bounce.len, 0x3000);
    let segs = map.segments().unwrap();
    assert!(segs.iter().all(|s| s.addr.0 + s.len <= 1 << 32));

    // Device -> memory: the NIC writes the bounce, sync_for_cpu lands it in the GPU.
    let data: Vec<u8> = (0..0x3000u32).map(|i| (i * 7) as u8).collect();
    write_segments(&p, &segs, &data);
    assert_ne!(p.gpu.cpu_read(0x1234, 0x3000), data, "nothing copied yet");
    map.sync_for_cpu().unwrap();
    assert_eq!(p.gpu.cpu_read(0x1234, 0x3000), data);
    // Bytes around the range are untouched.
    assert_eq!(p.gpu.cpu_read(0x1233, 1), [0]);
    assert_eq!(p.gpu.cpu_read(0x4234, 1), [0]);

    // Memory -> device: the CPU writes the GPU, sync_for_device stages it for the NIC.
    let back: Vec<u8> = data.iter().map(|b| !b).collect();
    p.gpu.cpu_write(0x1234, &back);
    map.sync_for_device().unwrap();
    assert_eq!(read_segments(&p, &segs), back);

    drop(map);
    assert!(m.finish().is_empty());
}

fn write_segments(p: &Pair, segs: &[Segment], data: &[u8]) {
    let mut at = 0usize;
    for s in segs {
        let n = s.len as usize;
        p.nic.dma_write(s.addr, &data[at..at + n]).unwrap();
        at += n;
    }
}

fn read_segments(p: &Pair, segs: &[Segment]) -> Vec<u8> {
    segs.iter()
        .flat_map(|s| p.nic.dma_read(s.addr, s.len as usize).unwrap())
        .collect()
}

/// Without a bounce buffer the syncs do nothing and `bounce()` says so.
#[test]
fn syncs_are_no_ops_without_a_bounce_buffer() {
    let m = workstation(132);
    let p = pair(&m, 2, odp());
    let map = p.map(&m, 0, 0x2000, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::Direct);
    assert_eq!(map.bounce().unwrap(), None);
    p.gpu.cpu_write(0, b"untouched");
    map.sync_for_device().unwrap();
    map.sync_for_cpu().unwrap();
    assert_eq!(p.gpu.cpu_read(0, 9), b"untouched");
    drop(map);
    assert!(m.finish().is_empty());
}

/// An exporter's `read` / `write` check the grant and its bounds; the trait's default says the
/// CPU has no access.
#[test]
fn cpu_access_checks_grant_and_bounds() {
    let m = workstation(133);
    let p = pair(&m, 2, odp());
    let g = p.exporter.export(range(0x100, 0x100), false).unwrap();
    let mut buf = [0u8; 0x10];
    p.exporter.read_grant(&g, Offset(0x100), &mut buf).unwrap();
    let outside = p.exporter.read_grant(&g, Offset(0x1f8), &mut buf);
    assert!(
        matches!(outside, Err(Error::OutOfBounds { .. })),
        "{outside:?}"
    );
    p.exporter.release(&g).unwrap();
    let gone = p.exporter.write_grant(&g, Offset(0x100), &buf);
    assert!(matches!(gone, Err(Error::UnknownGrant { .. })), "{gone:?}");

    #[derive(Debug)]
    struct NoCpu;
    impl MemoryExporter for NoCpu {
        fn id(&self) -> ExporterId {
            ExporterId(u64::MAX)
        }
        fn info(&self) -> ExporterInfo {
            unreachable!("not negotiated")
        }
        fn export(&self, _: AddrRange<Offset>, _: bool) -> Result<ExportGrant> {
            unreachable!("not exported")
        }
        fn chunks(&self, _: &ExportGrant) -> Result<ChunkList> {
            unreachable!("not exported")
        }
        fn release(&self, _: &ExportGrant) -> Result<()> {
            unreachable!("not exported")
        }
    }
    let none = NoCpu.read_grant(&g, Offset(0x100), &mut buf);
    assert_eq!(
        none,
        Err(Error::NoCpuAccess {
            exporter: ExporterId(u64::MAX)
        })
    );
    let alloc = NoCpu.allocate(4096, false);
    assert_eq!(
        alloc,
        Err(Error::CannotAllocate {
            exporter: ExporterId(u64::MAX)
        })
    );
    drop(m.finish());
}
