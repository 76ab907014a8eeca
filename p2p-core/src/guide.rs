//! # Implementer's guide: your own exporter and importer
//!
//! A driver brings two things: the memory it owns (a [`MemoryExporter`]) and the device that
//! does DMA (a [`DmaImporter`]). A backend brings the [`Platform`] (topology, IOMMU domains,
//! host memory). The [`Negotiator`] decides how the importer reaches the memory, sets the
//! mapping up, and runs the invalidation protocol when the memory moves or goes away.
//!
//! ## A complete example
//!
//! An accelerator whose 1 MiB of memory sits in its BAR behind a window of 8 pages (at most
//! 8 pages exported at once), and a NIC without ODP (it cannot take page faults, so what it
//! maps is pinned). Everything below is out-of-tree code: only public items are used.
//!
//! ```
//! use p2p_core::export::GrantBook;
//! use p2p_core::page::SZ_4K;
//! use p2p_core::prelude::*;
//! use p2p_core::testing::TestPlatform;
//! use p2p_core::topology::{presets, Bar};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::{Arc, Mutex};
//!
//! /// The accelerator's memory: offsets `0..size` of its BAR, `window_pages` pages at a time.
//! #[derive(Debug)]
//! struct Accel {
//!     id: ExporterId,
//!     device: PciAddr,
//!     bar: Bar,
//!     size: u64,
//!     window_pages: u64,
//!     state: Mutex<AccelState>,
//! }
//!
//! #[derive(Debug)]
//! struct AccelState {
//!     book: GrantBook, // which grants are out (shared book-keeping from p2p-core)
//!     window_used: u64,
//! }
//!
//! impl Accel {
//!     fn new(topo: &Topology, device: PciAddr, size: u64, window_pages: u64) -> Result<Self> {
//!         let bar = topo.endpoint(device)?.bars[0];
//!         // Named: errors say "accelerator 0000:03:00.0", not "exporter#7".
//!         let id = ExporterId::fresh_named(format!("accelerator {device}"));
//!         let state = Mutex::new(AccelState { book: GrantBook::new(id, size), window_used: 0 });
//!         Ok(Self { id, device, bar, size, window_pages, state })
//!     }
//!
//!     fn state(&self) -> std::sync::MutexGuard<'_, AccelState> {
//!         // A panic elsewhere must not take the exporter down with it.
//!         self.state.lock().unwrap_or_else(|p| p.into_inner())
//!     }
//! }
//!
//! /// Window pages a grant of `range` occupies: every page it touches.
//! fn pages(range: AddrRange<Offset>) -> Result<u64> {
//!     Ok(range.pages(SZ_4K)?.len() / SZ_4K)
//! }
//!
//! impl MemoryExporter for Accel {
//!     fn id(&self) -> ExporterId {
//!         self.id
//!     }
//!     fn info(&self) -> ExporterInfo {
//!         ExporterInfo {
//!             residency: Residency::Device(self.device),
//!             size: self.size,
//!             movable: false, // the accelerator never migrates it
//!             pinnable: true,
//!             bus_window: AddrRange::new(self.bar.bus, self.size).expect("checked in new"),
//!         }
//!     }
//!     fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
//!         let need = pages(range)?;
//!         let mut s = self.state();
//!         let free = self.window_pages - s.window_used;
//!         if need > free {
//!             return Err(Error::WindowFull { exporter: self.id, requested: range.len(), available: free * SZ_4K });
//!         }
//!         let grant = s.book.export(range, pin)?; // bounds-checks the range
//!         s.window_used += need;
//!         Ok(grant)
//!     }
//!     fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
//!         let span = self.state().book.get(grant)?.range.pages(SZ_4K)?;
//!         let at = span.start().0;
//!         Ok(ChunkList::from(Chunk {
//!             offset: span.start(),
//!             len: span.len(),
//!             phys: PhysAddr(self.bar.cpu.0 + at),
//!             bus: BusAddr(self.bar.bus.0 + at),
//!             mmio: true,
//!             file: None, // known by address only: no memfd or dma-buf behind it
//!         }))
//!     }
//!     fn release(&self, grant: &ExportGrant) -> Result<()> {
//!         let mut s = self.state();
//!         let held = pages(s.book.get(grant)?.range)?;
//!         s.book.release(grant)?;
//!         s.window_used -= held;
//!         Ok(())
//!     }
//!     // `allocate` keeps its default (Error::CannotAllocate), `read_grant` / `write_grant`
//!     // theirs (Error::NoCpuAccess): this memory is only ever mapped peer to peer.
//! }
//!
//! /// A NIC without ODP: it must be told to stop before its memory goes away.
//! #[derive(Debug)]
//! struct Nic {
//!     device: PciAddr,
//!     stopped: AtomicU64,
//! }
//!
//! impl DmaImporter for Nic {
//!     fn device(&self) -> PciAddr {
//!         self.device
//!     }
//!     fn caps(&self) -> ImporterCaps {
//!         ImporterCaps { flags: ImporterFlags::P2P, max_segment: 64 << 10, ..ImporterCaps::default() }
//!     }
//!     fn invalidate(&self, notice: &Invalidation) -> Result<()> {
//!         // A real driver fences the queues that use `notice.mapping` and waits for them here.
//!         self.stopped.fetch_add(1, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<()> {
//! let topo = presets::workstation()?;
//! let accel = Arc::new(Accel::new(&topo, "0000:03:00.0".parse()?, 1 << 20, 8)?);
//! let nic = Arc::new(Nic { device: "0000:05:00.0".parse()?, stopped: AtomicU64::new(0) });
//! let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
//! let rw = Access::READ | Access::WRITE;
//!
//! // The plan, with its reasons: one switch between them, so bus addresses, pinned.
//! let plan = neg.negotiate(&accel, &nic, rw, &Policy::default())?;
//! assert_eq!((plan.strategy.clone(), plan.pin), (Strategy::Direct, true));
//! println!("{plan}");
//!
//! // A mapping: the segments describe exactly the bytes asked for.
//! let range = AddrRange::new(Offset(0x1100), 0x6000)?;
//! let map = neg.map(&accel, &nic, range, rw, &Policy::default())?;
//! let segs = map.segments()?;
//! assert_eq!(segs[0].addr.0, accel.bar.bus.0 + 0x1100);
//! assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), 0x6000);
//!
//! // The window holds 8 pages and this mapping uses 7: the next one does not fit.
//! let more = neg.map(&accel, &nic, AddrRange::new(Offset(0x10000), 0x2000)?, rw, &Policy::default());
//! assert!(matches!(more, Err(Error::WindowFull { .. })));
//!
//! // A reset: the memory goes away whether or not the NIC agrees. Asking is refused (the
//! // mapping pins it); forcing tells the NIC and kills the mapping.
//! let whole = AddrRange::new(Offset(0), 1 << 20)?;
//! assert!(matches!(neg.invalidate(accel.id(), whole, InvalidationKind::Revoke), Err(Error::Pinned { .. })));
//! neg.revoke_forced(accel.id(), whole)?;
//! assert_eq!(nic.stopped.load(Ordering::Relaxed), 1);
//! assert!(matches!(map.segments(), Err(Error::Invalidated(_))));
//! # Ok(()) }
//! ```
//!
//! When the memory is a BAR the topology describes, much of this is already written:
//! [`BarExporter`](crate::export::BarExporter) exports it (pinnable, fixed, chunks with the BAR's
//! CPU and bus addresses, named `BAR0 of <device>` in messages), and your exporter can wrap it
//! and add only what differs, such as the window above: delegate `id`, `info` and `chunks`, and
//! count pages in `export` and `release`.
//!
//! To run DMA against real bytes, with the DMA sanitizer and a software IOMMU, put the same
//! types on `backend-mock`'s simulated machine: its crate docs show how.
//!
//! ## What each method must guarantee
//!
//! [`MemoryExporter`] (the full contract is on the trait):
//!
//! | method | guarantees |
//! |---|---|
//! | `id` | the same value for the life of the object; take it from [`ExporterId::fresh_named`] (or `fresh`) once |
//! | `info` | cheap and side-effect free: **it runs on every negotiation and every `map`** (the plan cache is keyed by what it returns), so no I/O and no locks held for long; `residency` changes only inside an invalidation |
//! | `export` | reserves exactly `range` or nothing; `WindowFull` when the window cannot hold it |
//! | `chunks` | page-aligned chunks covering the pages the grant touches, in offset order, where the memory is *now*; a [`ChunkList`](crate::traits::ChunkList), which holds one or two without allocating (it runs on every `map`) |
//! | `export_with_chunks` | optional: `export` then `chunks` of the grant in one call (the negotiator's, on every `map`); the default calls the two. Override it to do both under one lock, as `BarExporter` does; a wrapper that adds to `export` must not delegate it to what it wraps |
//! | `release` | gives the reservation back; `UnknownGrant` for a grant it does not hold |
//! | `allocate` | optional (default `CannotAllocate`); a platform's host memory must implement it (bounce buffers) |
//! | `read_grant` / `write_grant` | optional (default `NoCpuAccess`); needed for bounce plans of this memory |
//!
//! [`DmaImporter`]: `device` and `caps` answer the same on every call (plans are cached from
//! them). `invalidate` returns `Ok` only once the device has stopped using the mapping: its
//! page tables are zapped and DMA in flight has completed.
//!
//! ## Threads
//!
//! - All four traits are `Send + Sync`, and every method may be called from any thread, at the
//!   same time as any other method of the same object: several `map`s, `drop`s and
//!   invalidations run at once. `export`, `chunks` and `release` of different grants overlap.
//! - **Who calls `invalidate`:** the thread that runs the invalidation, i.e. the exporter's
//!   owner calling [`Negotiator::begin_invalidation`], [`Negotiator::invalidate`] or
//!   [`Negotiator::begin_forced_revoke`]. It is called with no negotiator lock held, so it **may
//!   block** until the device's DMA has stopped. It must not map the same range (that map would
//!   wait for the invalidation it is part of). Calls for different mappings of one importer may
//!   overlap when two exporters invalidate at once.
//! - A [`MappingObserver`](crate::negotiate::MappingObserver) is called with the registry lock
//!   held: it must not block or call back into the negotiator.
//! - The full protocol, and why it is safe, is in [`protocol`](crate::negotiate::protocol).
//!
//! ## Moving and revoking
//!
//! Move memory (migration, eviction) inside [`Negotiator::begin_invalidation`] with
//! [`InvalidationKind::Move`]: it is refused with [`Error::Pinned`] while a pinned mapping holds
//! the range. When the memory goes away regardless (function reset, hot unplug, dma-buf revoke),
//! use [`Negotiator::begin_forced_revoke`]: pinned mappings die too, and an importer that fails
//! to stop is counted, not waited for.
//!
//! ## Which error to return
//!
//! | situation | variant |
//! |---|---|
//! | the range is empty or outside `0..size` | [`Error::OutOfBounds`] |
//! | the BAR window (or pool) cannot hold the request | [`Error::WindowFull`] |
//! | a pinned grant of memory that cannot be pinned | [`Error::NotPinnable`] |
//! | export after the memory was revoked | [`Error::Revoked`] |
//! | `chunks` / `release` of a grant not outstanding | [`Error::UnknownGrant`] |
//! | `allocate` on an exporter that cannot | [`Error::CannotAllocate`] (the default) |
//! | CPU access the memory does not allow | [`Error::NoCpuAccess`] (the default) |
//! | a chunk or address not aligned as required | [`Error::Misaligned`] |
//! | `invalidate` could not stop the device | any variant that says why; the negotiator reports it as [`Error::InvalidateFailed`] naming the importer |
//!
//! ## Refusals and logs
//!
//! A refusal is a plan, not an error, until a mapping is asked for (see
//! [`negotiate`](crate::negotiate#refusal)). The negotiator emits `tracing` events: INFO for
//! refusals (with their reasons), invalidations, full windows and pin refusals; DEBUG for every
//! plan, establish (strategy, bytes, segments), re-fault and drop. Nothing is formatted unless a
//! subscriber records the event.
//!
//! [`MemoryExporter`]: crate::MemoryExporter
//! [`DmaImporter`]: crate::DmaImporter
//! [`Platform`]: crate::Platform
//! [`Negotiator`]: crate::negotiate::Negotiator
//! [`ExporterId::fresh_named`]: crate::traits::ExporterId::fresh_named
//! [`Negotiator::begin_invalidation`]: crate::negotiate::Negotiator::begin_invalidation
//! [`Negotiator::invalidate`]: crate::negotiate::Negotiator::invalidate
//! [`Negotiator::begin_forced_revoke`]: crate::negotiate::Negotiator::begin_forced_revoke
//! [`InvalidationKind::Move`]: crate::traits::InvalidationKind::Move
//! [`Error::Pinned`]: crate::Error::Pinned
//! [`Error::OutOfBounds`]: crate::Error::OutOfBounds
//! [`Error::WindowFull`]: crate::Error::WindowFull
//! [`Error::NotPinnable`]: crate::Error::NotPinnable
//! [`Error::Revoked`]: crate::Error::Revoked
//! [`Error::UnknownGrant`]: crate::Error::UnknownGrant
//! [`Error::CannotAllocate`]: crate::Error::CannotAllocate
//! [`Error::NoCpuAccess`]: crate::Error::NoCpuAccess
//! [`Error::Misaligned`]: crate::Error::Misaligned
//! [`Error::InvalidateFailed`]: crate::Error::InvalidateFailed
