//! The epoch clock of a wasmtime engine: what makes deadlines fire.
//!
//! Every store on the engine runs with epoch interruption ([`crate::wasm::engine`]): a
//! call traps once the engine's epoch passes the deadline its store was armed with. The
//! epoch moves only when something increments it, so each engine gets one [`EpochTicker`]:
//! a thread that increments it every [`EPOCH_TICK`] **while wasm may be running** (a
//! [`Busy`] guard is held, or was within the last [`LINGER_TICKS`]) and parks otherwise.
//!
//! - Why not tick always: a thread waking every millisecond costs an idle gateway with one
//!   plugin ~2.4% of a core on a 2-core AMD EPYC VM (470 ms of CPU in 20 s, against 20 ms
//!   with no ticker).
//! - Why it lingers: parking as soon as no call runs made a busy gateway wake the thread
//!   about once per request (a futex wake and a context switch: the component engine with
//!   kept instances measured 5-9% more CPU per request in paired windows), where ticking
//!   through short gaps costs what the always-on clock did.
//! - Why one per engine: two tickers on one engine would halve every deadline.
//!
//! A deadline armed while the clock is parked is unaffected: arming is relative to the
//! current epoch, and the guard is taken before arming, so the clock runs for the whole
//! call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use wasmtime::Engine;

use crate::wasm::EPOCH_TICK;

/// Ticks the clock goes on for after the last guard is dropped before it parks (100 ms): a
/// gateway under load never parks it between requests.
pub const LINGER_TICKS: u32 = 100;

/// The epoch clock of one engine; cheap to clone (every clone drives the same thread).
/// The thread ends once every clone and guard is dropped, or the engine is.
#[derive(Clone)]
pub struct EpochTicker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Guards held: calls that may be running wasm on the engine.
    busy: AtomicUsize,
    /// The ticking thread, to wake when the first guard is taken.
    thread: OnceLock<Thread>,
}

/// Keeps the epoch moving while held: take one before arming a store's deadline and hold
/// it until the store's wasm has returned.
#[must_use = "the epoch stops moving when the guard is dropped"]
pub struct Busy {
    shared: Arc<Shared>,
}

impl EpochTicker {
    /// Starts the clock of `engine`. An error when the thread cannot be started: without
    /// it no deadline would ever fire, so the caller must not run wasm.
    pub fn start(engine: &Engine) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            busy: AtomicUsize::new(0),
            thread: OnceLock::new(),
        });
        let handles = Arc::downgrade(&shared);
        let engine = engine.weak();
        let spawned = std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || tick(&handles, &engine))
            .map_err(|e| anyhow::anyhow!("cannot start the epoch thread: {e}"))?;
        let _ = shared.thread.set(spawned.thread().clone());
        Ok(Self { shared })
    }

    /// Runs the clock until the guard is dropped.
    pub fn busy(&self) -> Busy {
        if self.shared.busy.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = self.shared.thread.get()
        {
            thread.unpark();
        }
        Busy {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Shared {
    /// The last handle is gone: wakes the parked thread, which then finds no handle and
    /// ends.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The thread: one increment per tick while a guard is held and for [`LINGER_TICKS`]
/// after, parked otherwise (no wake-up at all while idle; it starts parked). A guard taken,
/// or the last handle dropped, between the check and `park` is not missed: its `unpark`
/// makes `park` return at once.
fn tick(handles: &Weak<Shared>, engine: &wasmtime::EngineWeak) {
    let mut idle = LINGER_TICKS;
    loop {
        let Some(shared) = handles.upgrade() else {
            return;
        };
        let running = shared.busy.load(Ordering::Acquire) > 0;
        drop(shared);
        idle = if running { 0 } else { idle.saturating_add(1) };
        if idle > LINGER_TICKS {
            std::thread::park();
            idle = LINGER_TICKS;
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        match engine.upgrade() {
            Some(engine) => engine.increment_epoch(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A module whose `f` returns at once: a call traps only if the epoch has reached the
    /// store's deadline when it enters.
    fn instance(engine: &Engine) -> (wasmtime::Store<()>, wasmtime::TypedFunc<(), ()>) {
        let wasm = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
        let module = wasmtime::Module::new(engine, &wasm).unwrap();
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
        (store, f)
    }

    #[test]
    fn the_epoch_moves_while_a_guard_is_held_and_never_while_none_is() {
        let engine = crate::wasm::engine(4, false).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        let (mut store, f) = instance(&engine);
        // Idle: many ticks' worth of time pass, and a deadline one tick away still holds.
        std::thread::sleep(EPOCH_TICK * 50);
        f.call(&mut store, ())
            .expect("the epoch moved with no guard held");
        // Busy: the deadline passes (waiting as long as a loaded machine may need).
        let guard = ticker.busy();
        let until = Instant::now() + Duration::from_secs(10);
        let trapped = loop {
            match f.call(&mut store, ()) {
                Err(e) => break e.downcast_ref::<wasmtime::Trap>().copied(),
                Ok(()) if Instant::now() < until => std::thread::sleep(EPOCH_TICK),
                Ok(()) => break None,
            }
        };
        assert_eq!(trapped, Some(wasmtime::Trap::Interrupt));
        // Dropped: idle again once the clock has lingered (a new deadline one tick away
        // holds once more).
        drop(guard);
        let until = Instant::now() + Duration::from_secs(10);
        let parked = loop {
            store.set_epoch_deadline(1);
            std::thread::sleep(EPOCH_TICK * 50);
            match f.call(&mut store, ()) {
                Ok(()) => break true,
                Err(_) if Instant::now() < until => {}
                Err(_) => break false,
            }
        };
        assert!(parked, "the epoch kept moving after the guard was dropped");
    }

    #[test]
    fn the_thread_ends_with_the_last_handle() {
        let engine = crate::wasm::engine(4, false).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        let handles = Arc::downgrade(&ticker.shared);
        let busy = ticker.busy();
        drop(ticker);
        assert!(handles.upgrade().is_some(), "a guard keeps the clock");
        drop(busy);
        // The thread holds a handle for an instant at each tick: wait that out.
        let until = Instant::now() + Duration::from_secs(10);
        while handles.upgrade().is_some() && Instant::now() < until {
            std::thread::sleep(EPOCH_TICK);
        }
        assert!(
            handles.upgrade().is_none(),
            "the clock outlived its handles"
        );
    }
}
