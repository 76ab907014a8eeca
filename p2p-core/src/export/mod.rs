//! Exporters that need no backend: a device BAR described by the topology, and the grant
//! book-keeping every exporter implementation can share.

mod bar;
mod grants;

pub use bar::BarExporter;
pub use grants::GrantBook;
