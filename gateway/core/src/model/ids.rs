//! Identifiers of configured things, used across the pipeline.

use serde::{Deserialize, Serialize};

/// Index of an issuer in the configuration's `issuer` list.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct IssuerId(pub usize);

/// A backend: its region and its index in that region's `backends`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId {
    /// The region.
    pub region: RegionId,
    /// Index in the region's backend list.
    pub index: usize,
}

/// Index of a region in [`crate::Config::regions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RegionId(pub usize);

/// Index of a plugin in [`crate::Config::plugins`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginId(pub usize);
