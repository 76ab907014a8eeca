//! Reading a machine: a sysfs tree and an NCCL file against the project's JSON file format (the
//! baseline) for the same machine, and pagemap translation of a locked buffer against a bare
//! pread loop over the same pagemap entries. `cargo bench --bench discovery` (the pagemap part
//! needs root). Results and ratios are in BENCHMARKS.md.

#[path = "../p2p-core/tests/fake_sysfs/mod.rs"]
mod fake_sysfs;

use backend_passthrough::LockedHostMemory;
use criterion::{criterion_group, criterion_main, Criterion};
use p2pdma::core::topology::{file, nccl, presets, sysfs};
use p2pdma::prelude::*;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn topology(c: &mut Criterion) {
    let dgx = presets::dgx().unwrap();
    let json = file::to_json(&dgx);
    let fs = fake_sysfs::FakeSysfs::new("bench");
    fake_sysfs::write_topology(&fs, &dgx);
    let devices = sysfs::scan(&fs.root).unwrap().devices.len();
    let xml_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/topologies/nccl-2socket.xml"
    );
    let xml = std::fs::read_to_string(xml_path).unwrap();
    println!("dgx preset: {devices} PCI functions in sysfs");

    let mut g = c.benchmark_group("discovery");
    g.bench_function("json_file_dgx", |b| {
        b.iter(|| black_box(file::from_json(black_box(&json), "dgx").unwrap()))
    });
    g.bench_function("sysfs_scan_dgx", |b| {
        b.iter(|| black_box(sysfs::scan(black_box(&fs.root)).unwrap()))
    });
    g.bench_function("nccl_xml_2socket", |b| {
        b.iter(|| black_box(nccl::from_xml(black_box(&xml), "nccl").unwrap()))
    });
    g.finish();
}

fn pagemap(c: &mut Criterion) {
    let Ok(mem) = LockedHostMemory::new(2 << 20, 0) else {
        println!("pagemap benchmarks skipped: reading PFNs needs root");
        return;
    };
    let grant = mem
        .export(AddrRange::new(Offset(0), 2 << 20).unwrap(), false)
        .unwrap();
    let raw = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut g = c.benchmark_group("pagemap_2m");
    g.bench_function("pread_512_entries", |b| {
        b.iter(|| {
            let mut e = [0u8; 8];
            for p in 0..512u64 {
                raw.read_exact_at(&mut e, (mem.va() / 4096 + p) * 8)
                    .unwrap();
                black_box(e);
            }
        })
    });
    g.bench_function("locked_host_memory_chunks", |b| {
        b.iter(|| black_box(mem.chunks(&grant).unwrap()))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = topology, pagemap }
criterion_main!(benches);
