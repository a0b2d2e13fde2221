//! The CLI's commands besides serving: the demo, edge bundles, offline decisions and the
//! plugin author's tools.

pub mod bundle;
pub mod demo;
pub mod offline;
pub mod plugin;
pub mod scenario;
pub mod strip;
pub mod worker_plugins;
