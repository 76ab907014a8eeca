//! The only code of this crate that talks to the kernel: locked anonymous memory (`mmap`,
//! `mlock`) and `/proc/self/pagemap`. Everything above it is safe Rust.

pub mod locked;
pub mod pagemap;
