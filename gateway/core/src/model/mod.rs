//! The model layer: the values every phase passes around — identifiers of configured
//! things, the request as the pipeline reads it, backend health, the risk verdict, and the
//! paths and names the gateway reserves. No behaviour beyond small accessors lives here.

mod claim_path;
mod ids;
mod request;
pub mod reserved;
mod runtime;
mod verdict;

pub use claim_path::{ClaimPath, ClaimSegment};
pub use ids::{BackendId, IssuerId, PluginId, RegionId};
pub use request::{AllHealthy, BackendHealth, ClientInfo, PeerHints, RequestParts};
pub use runtime::{Entropy, MonotonicClock, NoClock, NoEntropy};
pub use verdict::{Action, Contribution, RiskVerdict};
