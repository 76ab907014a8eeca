//! Mapping throughput, per backend and against well-known crates, in one criterion run:
//! `cargo bench --bench mapping`. Results and ratios are in BENCHMARKS.md.

use aarch64_paging::descriptor::Stage2Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2};
use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, PageTable, SoftIommu, VtdSecondLevel};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use p2pdma::core::export::BarExporter;
use p2pdma::core::testing::{TestExporter, TestHostMemory, TestImporter, TestPlatform};
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SZ_4K: u64 = 4096;
const SZ_2M: u64 = 2 << 20;
const SZ_1G: u64 = 1 << 30;
const RW: Access = Access::READ.union(Access::WRITE);

/// The full strict round trip a DMA-API map/unmap of one page costs: IOVA alloc, map, unmap
/// (which invalidates the IOTLB), flush, IOVA free.
fn round_trip<F: Format>(d: &SoftIommu<F>) {
    let iova = d.alloc_iova(SZ_4K, u64::MAX).unwrap();
    d.map(iova, PhysAddr(0x1234_5000), SZ_4K, RW).unwrap();
    black_box(d.unmap(iova, SZ_4K).unwrap());
    d.flush().unwrap();
    d.free_iova(iova, SZ_4K).unwrap();
}

/// x86_64's page tables over an arena of frames: "physical" address i * 4 KiB is arena[i].
mod x86 {
    use x86_64::structures::paging::{
        FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame,
        Size4KiB,
    };
    use x86_64::{PhysAddr, VirtAddr};

    pub struct Arena {
        frames: Box<[PageTable]>,
        next: u64,
    }

    struct Alloc<'a>(&'a mut u64, u64);

    // SAFETY: every frame handed out is an unused, zeroed arena frame, never handed out twice.
    unsafe impl FrameAllocator<Size4KiB> for Alloc<'_> {
        fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
            if *self.0 >= self.1 {
                return None;
            }
            let f = PhysFrame::containing_address(PhysAddr::new(*self.0 * 4096));
            *self.0 += 1;
            Some(f)
        }
    }

    impl Arena {
        pub fn new(frames: usize) -> Self {
            Self {
                frames: (0..frames).map(|_| PageTable::new()).collect(),
                next: 1,
            }
        }

        /// Maps `pages` 4 KiB pages from `va`, one `map_to` (a walk from the root) per page.
        pub fn map(&mut self, va: u64, pages: u64) {
            let limit = self.frames.len() as u64;
            let base = self.frames.as_mut_ptr();
            // SAFETY: frame 0 is the level-4 table; every table the mapper reaches is an arena
            // frame at `base + phys`, and nothing else touches the arena while `pt` lives.
            let mut pt = unsafe { OffsetPageTable::new(&mut *base, VirtAddr::new(base as u64)) };
            let mut alloc = Alloc(&mut self.next, limit);
            for i in 0..pages {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + i * 4096));
                let frame = PhysFrame::containing_address(PhysAddr::new(0x1_0000_0000 + i * 4096));
                let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
                // SAFETY: the "physical" frame is never accessed; only the tables are.
                unsafe { pt.map_to(page, frame, flags, &mut alloc) }
                    .unwrap()
                    .ignore();
            }
        }

        /// Unmaps what [`map`](Self::map) mapped (the tables stay).
        pub fn unmap(&mut self, va: u64, pages: u64) {
            let base = self.frames.as_mut_ptr();
            // SAFETY: as in `map`.
            let mut pt = unsafe { OffsetPageTable::new(&mut *base, VirtAddr::new(base as u64)) };
            for i in 0..pages {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + i * 4096));
                pt.unmap(page).unwrap().1.ignore();
            }
        }
    }
}

fn map_unmap_4k(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_unmap_4k");
    let vtd = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    let arm = SoftIommu::<ArmLpaeS2>::new(FlushPolicy::Strict).unwrap();
    round_trip(&vtd);
    round_trip(&arm);
    g.bench_function("soft_iommu_vtd_strict", |b| b.iter(|| round_trip(&vtd)));
    g.bench_function("soft_iommu_arm_strict", |b| b.iter(|| round_trip(&arm)));
    let mut arena = x86::Arena::new(16);
    arena.map(0x4000_0000, 1);
    arena.unmap(0x4000_0000, 1);
    g.bench_function("x86_64_crate_map_to_unmap", |b| {
        b.iter(|| {
            arena.map(0x4000_0000, 1);
            arena.unmap(0x4000_0000, 1);
        })
    });
    g.finish();
}

fn map_ranges(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_range");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    // 1 GiB, map then unmap, through the domain.
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    g.throughput(Throughput::Elements(512));
    g.bench_function("soft_iommu_1g_as_2m_leaves", |b| {
        b.iter(|| {
            d.map(Iova(SZ_1G), PhysAddr(SZ_1G), SZ_1G, RW).unwrap();
            d.unmap(Iova(SZ_1G), SZ_1G).unwrap();
        })
    });
    g.throughput(Throughput::Elements(SZ_1G / SZ_4K));
    g.bench_function("soft_iommu_1g_as_4k_leaves", |b| {
        b.iter(|| {
            // A physical address 4 KiB off 2 MiB alignment forces 4 KiB leaves.
            d.map(Iova(SZ_1G), PhysAddr(SZ_1G + SZ_4K), SZ_1G, RW)
                .unwrap();
            d.unmap(Iova(SZ_1G), SZ_1G).unwrap();
        })
    });
    // 2 MiB as 512 pages, map only, on a fresh table each time: ours (one call for the range),
    // x86_64 (a walk per page), aarch64-paging (map_range, pages only).
    g.throughput(Throughput::Elements(512));
    g.sample_size(30);
    g.bench_function("soft_pagetable_vtd_512_pages", |b| {
        b.iter_batched(
            || PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap(),
            |t| {
                t.map(SZ_1G, SZ_1G + SZ_4K, SZ_2M, RW, false).unwrap();
                t
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("x86_64_crate_512_pages_per_page", |b| {
        b.iter_batched(
            || x86::Arena::new(8),
            |mut a| {
                a.map(SZ_1G, 512);
                a
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("aarch64_paging_stage2_512_pages", |b| {
        let flags = Stage2Attributes::VALID
            | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::S2AP_ACCESS_RW
            | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
            | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
            | Stage2Attributes::SH_INNER;
        b.iter_batched(
            || IdMap::new(0, Stage2),
            |mut m| {
                let r = MemoryRegion::new(SZ_1G as usize, (SZ_1G + SZ_2M) as usize);
                m.map_range_with_constraints(&r, flags, Constraints::NO_BLOCK_MAPPINGS)
                    .unwrap();
                m
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn iova(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova_alloc_free");
    for live in [0usize, 1_000, 10_000] {
        // Ours: the live set is held, then one page is allocated and freed (per-thread cache).
        let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
        let held: Vec<Iova> = (0..live)
            .map(|i| d.alloc_iova(SZ_4K << (i % 3), 1 << 40).unwrap())
            .collect();
        g.bench_with_input(
            BenchmarkId::new("soft_iommu_cached", live),
            &live,
            |b, _| {
                b.iter(|| {
                    let a = d.alloc_iova(SZ_4K, 1 << 40).unwrap();
                    d.free_iova(black_box(a), SZ_4K).unwrap();
                })
            },
        );
        // Ours, tree only: sizes above the cached classes (33 pages) always reach the tree.
        g.bench_with_input(
            BenchmarkId::new("soft_iommu_tree_33_pages", live),
            &live,
            |b, _| {
                b.iter(|| {
                    let a = d.alloc_iova(33 * SZ_4K, 1 << 40).unwrap();
                    d.free_iova(black_box(a), 33 * SZ_4K).unwrap();
                })
            },
        );
        drop(held);
        for (name, policy) in [
            (
                "vm_allocator_first_match",
                vm_allocator::AllocPolicy::FirstMatch,
            ),
            (
                "vm_allocator_last_match",
                vm_allocator::AllocPolicy::LastMatch,
            ),
        ] {
            let mut va = vm_allocator::AddressAllocator::new(SZ_4K, 1 << 40).unwrap();
            let held: Vec<_> = (0..live)
                .map(|i| va.allocate(SZ_4K << (i % 3), SZ_4K, policy).unwrap())
                .collect();
            g.bench_with_input(BenchmarkId::new(name, live), &live, |b, _| {
                b.iter(|| {
                    let r = va.allocate(SZ_4K, SZ_4K, policy).unwrap();
                    va.free(black_box(&r)).unwrap();
                })
            });
            drop(held);
        }
        let mut oa = offset_allocator::Allocator::<u32>::new(1 << 28);
        let held: Vec<_> = (0..live)
            .map(|i| oa.allocate(1 << (i % 3)).unwrap())
            .collect();
        g.bench_with_input(
            BenchmarkId::new("offset_allocator_no_alignment", live),
            &live,
            |b, _| {
                b.iter(|| {
                    let a = oa.allocate(1).unwrap();
                    oa.free(black_box(a));
                })
            },
        );
        drop(held);
    }
    g.finish();
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    d.map(Iova(0x12_3456_7000), PhysAddr(0x8000_0000), SZ_4K, RW)
        .unwrap();
    d.dma_translate(Iova(0x12_3456_7000)).unwrap();
    g.bench_function("soft_iommu_iotlb_hit", |b| {
        b.iter(|| d.dma_translate(Iova(black_box(0x12_3456_7008))))
    });
    g.bench_function("soft_iommu_full_walk", |b| {
        b.iter(|| d.translate(Iova(black_box(0x12_3456_7008))))
    });
    let mut tlb = vm_memory::iommu::Iotlb::new();
    for i in 0..1000u64 {
        let iova = vm_memory::GuestAddress(i * 2 * SZ_4K);
        tlb.set_mapping(
            iova,
            vm_memory::GuestAddress(0x8000_0000 + i * SZ_4K),
            SZ_4K as usize,
            vm_memory::Permissions::ReadWrite,
        )
        .unwrap();
    }
    g.bench_function("vm_memory_iotlb_lookup_1000_entries", |b| {
        b.iter(|| {
            let it = vm_memory::iommu::Iotlb::lookup(
                &tlb,
                vm_memory::GuestAddress(black_box(500 * 2 * SZ_4K + 8)),
                8,
                vm_memory::Permissions::Read,
            )
            .unwrap();
            black_box(it.count())
        })
    });
    g.finish();
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_unmap_4k_threads");
    for n in [1u64, 2] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
            b.iter_custom(|iters| on_threads(n, |_| (0..iters).for_each(|_| round_trip(&d))))
        });
    }
    g.finish();
}

fn negotiate(c: &mut Criterion) {
    let mut g = c.benchmark_group("negotiate");
    let topo = presets::dgx().unwrap();
    let gpu: PciAddr = "0000:03:00.0".parse().unwrap();
    let nic: PciAddr = "0000:84:00.0".parse().unwrap();
    let exporter = TestExporter::new(&topo, gpu, 1 << 20, 256, MemoryKind::MOVABLE).unwrap();
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let importer = TestImporter::new(nic, caps);
    let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
    let p = Policy::default();
    g.bench_function("cached", |b| {
        b.iter(|| neg.negotiate(&exporter, &importer, RW, &p).unwrap())
    });
    g.bench_function("cold", |b| {
        b.iter(|| {
            neg.negotiate_uncached(&exporter, &importer, RW, &p)
                .unwrap()
        })
    });
    g.finish();
}

/// A platform whose every device's DMA goes through one strict `SoftIommu` (VT-d format): what a
/// driver sees on an IOMMU-translated machine, with no test double in the mapping path.
#[derive(Debug)]
struct SoftPlatform {
    topology: Arc<Topology>,
    domain: Arc<SoftIommu<VtdSecondLevel>>,
    host: Arc<TestHostMemory>,
}

impl Platform for SoftPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.clone()
    }
    fn topology_generation(&self) -> u64 {
        self.topology.generation()
    }
    fn domain(&self, _: PciAddr) -> p2pdma::prelude::Result<Arc<dyn IommuDomain>> {
        Ok(self.domain.clone())
    }
    fn domain_kind(&self, _: PciAddr) -> p2pdma::prelude::Result<DomainKind> {
        Ok(self.domain.kind())
    }
    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }
}

/// `Negotiator::map` + drop of `len` bytes by `threads` threads at once, through the importer's
/// `SoftIommu` (ACS redirect: via-iommu), the BAR exporter from p2p-core as the memory: thread
/// `t` maps GPU `t`'s BAR (two GPUs behind the switch), as two driver threads serving two GPUs
/// do. Element throughput: one map + drop per thread per iteration.
fn end_to_end(c: &mut Criterion) {
    let mut g = c.benchmark_group("end_to_end");
    let topo = presets::acs_switch().unwrap();
    let gpus: [PciAddr; 2] = [
        "0000:03:00.0".parse().unwrap(),
        "0000:04:00.0".parse().unwrap(),
    ];
    let nic: PciAddr = "0000:05:00.0".parse().unwrap();
    let platform = Arc::new(SoftPlatform {
        topology: Arc::new(topo.clone()),
        domain: Arc::new(SoftIommu::new(FlushPolicy::Strict).unwrap()),
        host: Arc::new(TestHostMemory::new(1 << 30, 1 << 26)),
    });
    let neg = Negotiator::new(platform);
    let exporters: [Arc<dyn MemoryExporter>; 2] =
        gpus.map(|gpu| Arc::new(BarExporter::new(&topo, gpu, 0).unwrap()) as _);
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(nic, caps));
    let p = Policy::default();
    for exporter in &exporters {
        let plan = neg.negotiate(&**exporter, &*importer, RW, &p).unwrap();
        assert_eq!(plan.strategy, Strategy::ViaIommu, "{plan}");
    }
    let map_drop = |t: usize, len: u64| {
        let r = AddrRange::new(Offset(0), len).unwrap();
        drop(black_box(
            neg.map(&exporters[t], &importer, r, RW, &p).unwrap(),
        ));
    };
    for (name, len, threads) in [
        ("map_drop_4k", SZ_4K, 1u64),
        ("map_drop_4k", SZ_4K, 2),
        ("map_drop_2m", SZ_2M, 1),
    ] {
        g.throughput(Throughput::Elements(threads));
        g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &n| {
            b.iter_custom(|iters| on_threads(n, |t| (0..iters).for_each(|_| map_drop(t, len))))
        });
    }
    g.finish();
}

/// Runs `work(t)` on threads `t` = 0..`n` at once; the wall time until the last is done.
fn on_threads(n: u64, work: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..n as usize {
            let work = &work;
            s.spawn(move || work(t));
        }
    });
    start.elapsed()
}

/// What the machine's cores give two threads that share nothing, in the same run as the
/// two-thread ratios of the mapping path: the ceiling those are read against. Each thread updates its own
/// 4 KiB table at places a xorshift chooses (about 70 ns an iteration). On a VM whose host is
/// busy, the two-thread figure falls with no code of ours involved.
fn two_cores(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_cores");
    for n in [1u64, 2] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("private_work", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                on_threads(n, |t| {
                    black_box(private_work(iters, t));
                })
            })
        });
    }
    g.finish();
}

/// `iterations` rounds of work on a table of this thread's own; `seed` varies the places.
fn private_work(iterations: u64, seed: usize) -> u64 {
    let mut table = [0u64; 512];
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..iterations {
        for _ in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) & 511;
            table[i] = table[i].wrapping_add(x);
            if table[i] & 1 == 0 {
                x = x.wrapping_add(table[(i + 1) & 511]);
            }
        }
    }
    black_box(&table);
    x
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = map_unmap_4k, map_ranges, iova, translate, threads, negotiate, two_cores, end_to_end }
criterion_main!(benches);
