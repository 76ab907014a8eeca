//! # backend-mock
//!
//! A deterministic simulated machine for p2pdma: byte-backed RAM and BARs, DMA engines that route
//! requests as PCIe does, seeded fault injection, an ordered event log and the DMA sanitizer.
//!
//! This crate is empty until its issue is done: nothing here pretends to work. Until then,
//! [`p2p_core::testing`] holds simple in-memory implementations of the traits.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
