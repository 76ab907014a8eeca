//! A model-based state machine: random sequences of export+map, DMA, migrate, revoke, re-fault
//! and drop run on the simulated machine and on a simple model, checked against each other after
//! every step. Legal steps must give no sanitizer finding and read back what was written; each
//! seeded illegal step (a DMA through a dead mapping, a stray address, an address above the mask)
//! must give exactly the finding the model expects. Runs at least 256 cases; proptest prints the
//! failing case, seed included.

mod common;

use backend_mock::{Machine, MockGpu, MockNic};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use proptest::prelude::{
    any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, Strategy as _,
};
use std::sync::Arc;

const PAGES: u64 = 16;
const WINDOW: u64 = 12;
const PAGE: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Map {
        gpu: usize,
        nic: usize,
        page: u64,
        pages: u64,
    },
    Write {
        m: usize,
        off: u64,
        len: u64,
        byte: u8,
    },
    Read {
        m: usize,
    },
    Migrate {
        gpu: usize,
    },
    Revoke {
        gpu: usize,
    },
    Drop {
        m: usize,
    },
    Refault {
        m: usize,
    },
    StaleRead {
        m: usize,
    },
    Stray {
        page: u64,
    },
    AboveMask,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..2usize, 0..PAGES, 1..5u64).prop_map(|(gpu, nic, page, pages)| Op::Map { gpu, nic, page, pages }),
        4 => (0..8usize, 0..PAGES * PAGE, 1..256u64, any::<u8>()).prop_map(|(m, off, len, byte)| Op::Write { m, off, len, byte }),
        3 => (0..8usize).prop_map(|m| Op::Read { m }),
        1 => (0..2usize).prop_map(|gpu| Op::Migrate { gpu }),
        1 => (0..2usize).prop_map(|gpu| Op::Revoke { gpu }),
        2 => (0..8usize).prop_map(|m| Op::Drop { m }),
        2 => (0..8usize).prop_map(|m| Op::Refault { m }),
        1 => (0..8usize).prop_map(|m| Op::StaleRead { m }),
        1 => (0..64u64).prop_map(|page| Op::Stray { page }),
        1 => Just(Op::AboveMask),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    Invalidated { revoked: bool },
    Dropped,
}

struct ModelMapping {
    handle: Option<Mapping>,
    gpu: usize,
    nic: usize,
    page: u64,
    pages: u64,
    state: State,
    segments: Vec<Segment>,
    /// Window pages its grant holds (taken while the memory was in the BAR).
    window: u64,
}

struct ModelGpu {
    dev: Arc<MockGpu>,
    data: Vec<u8>,
    revoked: bool,
    in_host: bool,
    window_used: u64,
    movable_unpinnable: bool,
}

/// DMA addresses of bytes `[off, off+len)` of a mapping, split at segment boundaries.
fn dma_pieces(segments: &[Segment], mut off: u64, mut len: u64) -> Vec<(DmaAddr, u64)> {
    let mut out = Vec::new();
    for s in segments {
        if len == 0 {
            break;
        }
        if off >= s.len {
            off -= s.len;
            continue;
        }
        let n = (s.len - off).min(len);
        out.push((DmaAddr(s.addr.0 + off), n));
        len -= n;
        off = 0;
    }
    out
}

fn covered(maps: &[ModelMapping], nic: usize, addr: u64) -> bool {
    maps.iter()
        .filter(|m| m.nic == nic && m.state == State::Live)
        .flat_map(|m| m.segments.iter())
        .any(|s| addr >= s.addr.0 && addr < s.addr.0 + s.len)
}

fn run(seed: u64, acs: bool, ops: Vec<Op>) -> Result<(), proptest::test_runner::TestCaseError> {
    let topo = if acs {
        presets::acs_switch()
    } else {
        presets::workstation()
    }
    .unwrap();
    let m = Machine::new(topo, &collect(seed)).unwrap();
    let mut gpus: Vec<ModelGpu> = [(GPU, true), (GPU1, false)]
        .into_iter()
        .map(|(g, movable)| ModelGpu {
            dev: m
                .gpu(
                    a(g),
                    PAGES * PAGE,
                    WINDOW,
                    MemoryKind {
                        movable,
                        pinnable: !movable,
                    },
                )
                .unwrap(),
            data: vec![0; (PAGES * PAGE) as usize],
            revoked: false,
            in_host: false,
            window_used: 0,
            movable_unpinnable: movable,
        })
        .collect();
    let nics: Vec<Arc<MockNic>> = vec![
        m.nic(a(NIC), caps(ImporterFlags::ODP | ImporterFlags::P2P, 64))
            .unwrap(),
        m.nic(a(NVME), caps(ImporterFlags::P2P, 64)).unwrap(),
    ];
    let narrow = m.nic(a(NVME), caps(ImporterFlags::P2P, 32)).unwrap();
    let mut maps: Vec<ModelMapping> = Vec::new();
    let mut expected_findings = 0usize;
    let policy = Policy::default();

    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("seed {seed} acs {acs} step {step} {op:?}");
        match op {
            Op::Map {
                gpu,
                nic,
                page,
                pages,
            } => {
                let pages = pages.min(PAGES - page);
                let g = &mut gpus[gpu];
                let exp: Arc<dyn MemoryExporter> = g.dev.clone();
                let imp: Arc<dyn DmaImporter> = nics[nic].clone();
                let got =
                    m.negotiator()
                        .map(&exp, &imp, range(page * PAGE, pages * PAGE), RW, &policy);
                let refused = nic == 1 && g.movable_unpinnable;
                let full = !g.in_host && g.window_used + pages > WINDOW;
                match got {
                    Ok(h) => {
                        prop_assert!(
                            !refused && !g.revoked && !full,
                            "{ctx}: map should have failed"
                        );
                        let window = if g.in_host { 0 } else { pages };
                        g.window_used += window;
                        let segments = h.segments().unwrap();
                        let total: u64 = segments.iter().map(|s| s.len).sum();
                        prop_assert_eq!(total, pages * PAGE, "{}", ctx);
                        maps.push(ModelMapping {
                            handle: Some(h),
                            gpu,
                            nic,
                            page,
                            pages,
                            state: State::Live,
                            segments,
                            window,
                        });
                    }
                    Err(Error::Refused { .. }) => prop_assert!(refused, "{ctx}: refused"),
                    Err(Error::Revoked(_)) => prop_assert!(!refused && g.revoked, "{ctx}: revoked"),
                    Err(Error::WindowFull { .. }) => {
                        prop_assert!(!refused && !g.revoked && full, "{ctx}: full")
                    }
                    Err(e) => prop_assert!(false, "{ctx}: unexpected {e}"),
                }
            }
            Op::Write {
                m: i,
                off,
                len,
                byte,
            } => {
                let Some(mm) = maps.get(i).filter(|mm| mm.state == State::Live) else {
                    continue;
                };
                let size = mm.pages * PAGE;
                let off = off % size;
                let len = len.min(size - off);
                let data = vec![byte; len as usize];
                let mut done = 0usize;
                for (addr, n) in dma_pieces(&mm.segments, off, len) {
                    nics[mm.nic]
                        .dma_write(addr, &data[done..done + n as usize])
                        .map_err(|e| {
                            proptest::test_runner::TestCaseError::fail(format!("{ctx}: {e}"))
                        })?;
                    done += n as usize;
                }
                let start = (mm.page * PAGE + off) as usize;
                gpus[mm.gpu].data[start..start + len as usize].copy_from_slice(&data);
            }
            Op::Read { m: i } => {
                let Some(mm) = maps.get(i).filter(|mm| mm.state == State::Live) else {
                    continue;
                };
                let mut got = Vec::new();
                for (addr, n) in dma_pieces(&mm.segments, 0, mm.pages * PAGE) {
                    got.extend(nics[mm.nic].dma_read(addr, n as usize).map_err(|e| {
                        proptest::test_runner::TestCaseError::fail(format!("{ctx}: {e}"))
                    })?);
                }
                let start = (mm.page * PAGE) as usize;
                prop_assert!(
                    got == gpus[mm.gpu].data[start..start + got.len()],
                    "{ctx}: read back differs"
                );
            }
            Op::Migrate { gpu } | Op::Revoke { gpu } => {
                let revoke = matches!(op, Op::Revoke { .. });
                let pinned = maps
                    .iter()
                    .any(|mm| mm.gpu == gpu && mm.state == State::Live && mm.nic == 1);
                let dev = gpus[gpu].dev.clone();
                let got = if revoke {
                    m.revoke(&dev)
                } else {
                    m.migrate(&dev)
                };
                match got {
                    Err(Error::Pinned { .. }) => prop_assert!(pinned, "{ctx}: pinned refusal"),
                    Err(e) => prop_assert!(false, "{ctx}: unexpected {e}"),
                    Ok(report) => {
                        prop_assert!(!pinned, "{ctx}: a pinned range moved");
                        let mut n = 0;
                        for mm in maps
                            .iter_mut()
                            .filter(|mm| mm.gpu == gpu && mm.state == State::Live)
                        {
                            mm.state = State::Invalidated { revoked: revoke };
                            gpus[gpu].window_used -= mm.window;
                            mm.window = 0;
                            n += 1;
                        }
                        prop_assert_eq!(report.mappings, n, "{}", ctx);
                        if revoke {
                            gpus[gpu].revoked = true;
                        } else {
                            gpus[gpu].in_host = true;
                        }
                    }
                }
            }
            Op::Drop { m: i } => {
                let Some(mm) = maps.get_mut(i) else { continue };
                if mm.state == State::Dropped {
                    continue;
                }
                mm.handle = None;
                mm.state = State::Dropped;
                gpus[mm.gpu].window_used -= mm.window;
                mm.window = 0;
            }
            Op::Refault { m: i } => {
                let Some(mm) = maps.get_mut(i) else { continue };
                let Some(h) = &mm.handle else { continue };
                let g = &mut gpus[mm.gpu];
                let got = m.negotiator().refault(h, &policy);
                match mm.state {
                    State::Live => prop_assert!(got.is_ok(), "{ctx}: refault of a live mapping"),
                    State::Invalidated { revoked: true } => {
                        prop_assert!(
                            matches!(got, Err(Error::CannotRefault { .. })),
                            "{ctx}: {got:?}"
                        )
                    }
                    State::Invalidated { revoked: false } => {
                        let full = !g.in_host && g.window_used + mm.pages > WINDOW;
                        match got {
                            Ok(_) => {
                                prop_assert!(
                                    !g.revoked && !full,
                                    "{ctx}: refault should have failed"
                                );
                                mm.state = State::Live;
                                mm.window = if g.in_host { 0 } else { mm.pages };
                                g.window_used += mm.window;
                                mm.segments = h.segments().unwrap();
                            }
                            Err(Error::Revoked(_)) => prop_assert!(g.revoked, "{ctx}"),
                            Err(Error::WindowFull { .. }) => prop_assert!(full, "{ctx}"),
                            Err(e) => prop_assert!(false, "{ctx}: unexpected {e}"),
                        }
                    }
                    State::Dropped => unreachable!(),
                }
            }
            Op::StaleRead { m: i } => {
                let Some(mm) = maps.get(i).filter(|mm| mm.state != State::Live) else {
                    continue;
                };
                let addr = mm.segments[0].addr.0;
                if !covered(&maps, mm.nic, addr) {
                    expected_findings += 1;
                }
                let _ = nics[mm.nic].dma_read(DmaAddr(addr), 8);
            }
            Op::Stray { page } => {
                let addr = 0x7000_0000 + page * PAGE;
                if !covered(&maps, 0, addr) {
                    expected_findings += 1;
                }
                let _ = nics[0].dma_read(DmaAddr(addr), 8);
            }
            Op::AboveMask => {
                expected_findings += 1;
                prop_assert!(narrow.dma_read(DmaAddr(1 << 32), 8).is_err(), "{ctx}");
            }
        }
        // Invariants after every step.
        let findings = m.platform().sanitizer().findings();
        prop_assert_eq!(
            findings.len(),
            expected_findings,
            "{}: findings {:?}",
            ctx,
            findings
        );
        let registered = maps.iter().filter(|mm| mm.state != State::Dropped).count();
        prop_assert_eq!(m.negotiator().registry().len(), registered, "{}", ctx);
        for (gi, g) in gpus.iter().enumerate() {
            let live = maps
                .iter()
                .filter(|mm| mm.gpu == gi && mm.state == State::Live)
                .count();
            prop_assert_eq!(g.dev.grants(), live, "{}: grants of gpu {}", ctx, gi);
            if !g.revoked {
                prop_assert!(
                    g.dev.cpu_read(0, g.data.len()) == g.data,
                    "{ctx}: gpu {gi} memory differs from the model"
                );
            }
        }
    }
    drop(maps);
    for g in &gpus {
        prop_assert_eq!(g.dev.grants(), 0);
    }
    for nic in [NIC, NVME] {
        let dom = m.platform().iommu(a(nic)).unwrap().inner();
        prop_assert_eq!((dom.mapped_pages(), dom.live_iovas()), (0, 0));
    }
    prop_assert_eq!(
        m.finish().len(),
        expected_findings,
        "no leak findings once everything is dropped"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_machine_agrees_with_the_model(seed: u64, acs: bool, ops in proptest::collection::vec(op(), 1..48)) {
        run(seed, acs, ops)?;
    }
}
