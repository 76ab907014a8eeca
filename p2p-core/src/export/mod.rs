//! Exporters that need no backend: a device BAR described by the topology, device memory that
//! migrates and can be revoked, host RAM by its addresses, and the grant book-keeping every
//! exporter implementation shares.

mod bar;
mod device;
mod grants;
mod host;

pub use bar::BarExporter;
pub use device::DeviceMemory;
pub use grants::GrantBook;
pub use host::HostRam;
