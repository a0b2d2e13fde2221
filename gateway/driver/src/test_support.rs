//! What the driver's unit tests share: a configuration loader and an executor for futures
//! that never wait.
#![allow(clippy::expect_used)]

use portcullis_core::Config;
use portcullis_core::config::MapFiles;

/// `text` loaded as a configuration, its audit key file provided.
pub fn config(text: &str) -> Config {
    let files =
        MapFiles::default().with("audit.key", "IeHXWDgy6jrX73GKOsdqlvhYzS_ZGdGPi97mTse-k6Q");
    portcullis_core::config::load(text, "test", &files).expect("config")
}

/// Polls `f` to its end (the tests' document sources answer at once).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
