//! One decision's exchange with the ports that may wait (state, client, risk), and the log that makes the
//! decision resumable.
//!
//! Every state operation, outbound call and random draw of a decision goes through its
//! [`Io`], which logs the answer. When a port cannot answer at once, the `Io` records the
//! operation as the decision's [`Need`] and answers every later ask with an error; the
//! pipeline stops at the end of the phase and returns a [`Suspended`] decision holding the
//! log. Resuming runs the pure pipeline again over the log plus the adapter's answer: each
//! ask is answered from the log, in order, until the log is used up; then the ports are
//! asked again. The run is deterministic given the log, so the replayed prefix asks for
//! exactly what it asked before; if it does not (a key set or a backend's health changed
//! while the decision waited), that ask is answered with an error (the feature's
//! fail-closed or `on_unavailable` rule applies) and the rest of the log is dropped.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::time::Duration;

use super::client::{CallOp, CallResult, Client};
use super::risk::{PluginAnswer, RiskAssessor, RiskContext, failed};
use super::state::{LimitCheck, LimitStatus, State, StateOp, StateResult};
use crate::config::{PluginId, SiteVerify};
use crate::crypto::SignatureCheck;
use crate::model::{Entropy, IssuerId};
use crate::time::Timestamp;

/// What a suspended decision waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// A shared-state operation.
    State(StateOp),
    /// An outbound call.
    Call(CallOp),
    /// A signature checked by the platform's own, asynchronous crypto.
    Verify(SignatureCheck),
    /// Risk plugins run on a request.
    Risk {
        /// The plugins, in order.
        plugins: Vec<PluginId>,
        /// What they are told.
        ctx: Box<RiskContext>,
    },
}

/// The adapter's answer to a [`Need`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// To a state operation.
    State(StateResult),
    /// To an outbound call.
    Call(CallResult),
    /// The platform's verdict: `None` when it cannot check this one (the portable
    /// verifier then does).
    Verified(Option<bool>),
    /// The plugins' answers, one per plugin in order.
    Risk(Vec<PluginAnswer>),
}

impl Answer {
    /// The answer of an adapter that cannot perform `need` (an error of the right kind):
    /// the feature that asked fails closed.
    pub fn failed(need: &Need, why: impl Into<String>) -> Self {
        match need {
            Need::State(_) => Answer::State(Err(why.into())),
            Need::Call(_) => Answer::Call(Err(why.into())),
            Need::Verify(_) => Answer::Verified(None),
            Need::Risk { plugins, .. } => Answer::Risk(failed(plugins, &why.into())),
        }
    }
}

/// One logged answer.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// Random bytes drawn (or why none could be).
    Random(Result<Vec<u8>, String>),
    /// An operation and its answer.
    Io(Need, Answer),
}

/// A decision stopped until the adapter performs [`Suspended::need`] and resumes it
/// ([`crate::Gateway::resume`]) with the answer.
#[derive(Debug)]
pub struct Suspended {
    pub(crate) log: Vec<Entry>,
    pub(crate) need: Need,
    /// The decision's time: a resumed decision is made at the time it started.
    pub(crate) now: Timestamp,
    /// The monotonic clock when the decision started (phase timings stay relative to it).
    pub(crate) origin: Option<u64>,
    /// How many times this decision has waited.
    pub(crate) waits: u32,
}

impl Suspended {
    /// What the decision waits for.
    pub fn need(&self) -> &Need {
        &self.need
    }

    /// How many times this decision has waited so far (this wait included).
    pub fn waits(&self) -> u32 {
        self.waits
    }
}

/// Why an ask got no answer because the decision is waiting for an earlier one.
const WAITING: &str = "the decision is waiting for an earlier operation";
/// Why a replayed ask got an error.
const DIVERGED: &str = "the decision's inputs changed while it waited for an operation";

/// One decision's exchange with the state and client ports and the random source.
pub struct Io<'a> {
    state: &'a dyn State,
    client: &'a dyn Client,
    risk: &'a dyn RiskAssessor,
    entropy: &'a dyn Entropy,
    log: RefCell<Vec<Entry>>,
    cursor: Cell<usize>,
    waiting: RefCell<Option<Need>>,
    /// False once the decision may wait no more: ports that cannot answer at once fail.
    may_wait: bool,
}

impl<'a> Io<'a> {
    pub(crate) fn new(
        state: &'a dyn State,
        client: &'a dyn Client,
        risk: &'a dyn RiskAssessor,
        entropy: &'a dyn Entropy,
        log: Vec<Entry>,
        may_wait: bool,
    ) -> Self {
        Self {
            state,
            client,
            risk,
            entropy,
            log: RefCell::new(log),
            cursor: Cell::new(0),
            waiting: RefCell::new(None),
            may_wait,
        }
    }

    /// Performs a state operation (or replays its logged answer).
    pub fn state(&self, op: StateOp) -> StateResult {
        match self.ask(Need::State(op))? {
            Answer::State(r) => r,
            _ => Err(DIVERGED.to_owned()),
        }
    }

    /// Performs an outbound call (or replays its logged answer).
    pub fn call(&self, op: CallOp) -> CallResult {
        match self.ask(Need::Call(op))? {
            Answer::Call(r) => r,
            _ => Err(DIVERGED.to_owned()),
        }
    }

    /// Has the platform check a signature (or replays its logged verdict): `None` when it
    /// cannot, or the decision is waiting for it.
    pub fn verify(&self, check: SignatureCheck) -> Option<bool> {
        match self.ask(Need::Verify(check)) {
            Ok(Answer::Verified(v)) => v,
            _ => None,
        }
    }

    /// Runs risk plugins (or replays their logged answers): one answer per plugin, in
    /// order; a failure for each when they cannot run (their `on_error` decides).
    pub fn assess(&self, plugins: &[PluginId], ctx: RiskContext) -> Vec<PluginAnswer> {
        let need = Need::Risk {
            plugins: plugins.to_vec(),
            ctx: Box::new(ctx),
        };
        match self.ask(need) {
            Ok(Answer::Risk(answers)) if answers.len() == plugins.len() => answers,
            Ok(_) => failed(plugins, DIVERGED),
            Err(why) => failed(plugins, &why),
        }
    }

    /// The value of `key` in the shared state (`Ok(None)` when absent).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.state(StateOp::Get {
            key: key.to_owned(),
        })?
        .value()
    }

    /// Stores `value` under `key` for `ttl`.
    pub fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
        self.state(StateOp::Set {
            key: key.to_owned(),
            value: value.to_vec(),
            ttl,
        })?
        .done()
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.state(StateOp::Delete {
            key: key.to_owned(),
        })?
        .done()
    }

    /// Records a one-time value for `ttl`: `Ok(true)` the first time, `Ok(false)` when it
    /// was seen before, `Err` when the state cannot tell (callers refuse: fail closed).
    pub fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, String> {
        self.state(StateOp::FirstUse {
            key: key.to_owned(),
            ttl,
        })?
        .first_use()
    }

    /// Checks `checks` as one atomic step (see [`StateOp::RateLimit`]).
    pub fn rate_limit(
        &self,
        checks: Vec<LimitCheck>,
        now: Timestamp,
    ) -> Result<Vec<LimitStatus>, String> {
        self.state(StateOp::RateLimit { checks, now })?.limits()
    }

    /// POSTs a form to `issuer`'s `endpoint` (see [`CallOp::Token`]).
    pub fn token_request(
        &self,
        issuer: IssuerId,
        endpoint: super::FormEndpoint,
        authorization: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        self.call(CallOp::Token {
            issuer,
            endpoint,
            authorization: authorization.to_owned(),
            body: body.to_owned(),
        })?
        .token()
    }

    /// Asks a site-verification service about `site_token` (see [`CallOp::SiteVerify`]).
    pub fn verify_site_token(
        &self,
        site: &SiteVerify,
        site_token: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<bool, String> {
        self.call(CallOp::SiteVerify {
            site: site.clone(),
            site_token: site_token.to_owned(),
            remote_ip,
        })?
        .site_verified()
    }

    /// True once a port could not answer at once: the phase should stop (the pipeline
    /// discards what it returns and waits).
    pub fn waiting(&self) -> bool {
        self.waiting.borrow().is_some()
    }

    /// The log and the need, when the decision waits.
    pub(crate) fn suspend(self) -> Option<(Vec<Entry>, Need)> {
        let need = self.waiting.into_inner()?;
        Some((self.log.into_inner(), need))
    }

    fn ask(&self, need: Need) -> Result<Answer, String> {
        if self.waiting() {
            return Err(WAITING.to_owned());
        }
        let i = self.cursor.get();
        let replayed = match self.log.borrow().get(i) {
            Some(Entry::Io(logged, answer)) if *logged == need => Some(Ok(answer.clone())),
            Some(_) => Some(Err(DIVERGED.to_owned())),
            None => None,
        };
        if let Some(r) = replayed {
            if r.is_ok() {
                self.cursor.set(i + 1);
            } else {
                self.log.borrow_mut().truncate(i);
            }
            return r;
        }
        let now = match &need {
            Need::State(op) => self.state.now(op).map(Answer::State),
            Need::Call(op) => self.client.now(op).map(Answer::Call),
            Need::Risk { plugins, ctx } => self.risk.now(plugins, ctx).map(Answer::Risk),
            // Platform crypto is asynchronous by nature: always awaited.
            Need::Verify(_) => None,
        };
        let answer = match now {
            Some(a) => a,
            None if self.may_wait => {
                *self.waiting.borrow_mut() = Some(need);
                return Err(WAITING.to_owned());
            }
            None => Answer::failed(&need, "the decision waited too often"),
        };
        self.log.borrow_mut().push(Entry::Io(need, answer.clone()));
        self.cursor.set(i + 1);
        Ok(answer)
    }
}

impl Entropy for Io<'_> {
    fn fill(&self, out: &mut [u8]) -> Result<(), String> {
        if self.waiting() {
            return Err(WAITING.to_owned());
        }
        let i = self.cursor.get();
        let logged = match self.log.borrow().get(i) {
            Some(Entry::Random(r)) => Some(r.clone()),
            Some(Entry::Io(..)) => None,
            None => None,
        };
        match logged {
            Some(Ok(bytes)) if bytes.len() == out.len() => {
                out.copy_from_slice(&bytes);
                self.cursor.set(i + 1);
                return Ok(());
            }
            Some(Err(e)) => {
                self.cursor.set(i + 1);
                return Err(e);
            }
            // A draw of another size, or an operation where a draw was logged: the run
            // went another way; the rest of the log no longer applies.
            _ => self.log.borrow_mut().truncate(i),
        }
        let drawn = self.entropy.fill(out).map(|()| out.to_vec());
        let result = drawn.as_ref().map(|_| ()).map_err(Clone::clone);
        self.log.borrow_mut().push(Entry::Random(drawn));
        self.cursor.set(i + 1);
        result
    }
}
