//! # backend-passthrough
//!
//! Identity DMA on real Linux: DMA address = bus address, host-bridge window offsets, DMA-mask
//! limits, and host-memory translation through `/proc/self/pagemap`.
//!
//! This crate is empty until its issue is done: nothing here pretends to work. The traits it will
//! implement live in [`p2p_core::traits`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]
