//! The Durable Object class that holds one state key ([`StateObject`]), and the worker's
//! side: the core's state operations sent to the objects (see [`crate::durable`]).

use portcullis_core::Timestamp;
use portcullis_core::ports::{LimitCheck, LimitStatus, StateAnswer, StateOp, StateResult};
use worker::{
    DurableObject, Env, Method, ObjectNamespace, Request, RequestInit, Response, State,
    durable_object,
};

use crate::durable::{Entry, KeyOp, Reply, Write, apply};

/// The storage key of an object's one entry.
const ENTRY: &str = "entry";

/// One state key: its entry in the object's storage.
#[durable_object(fetch)]
pub struct StateObject {
    state: State,
}

impl DurableObject for StateObject {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let op: KeyOp = req.json().await?;
        let storage = self.state.storage();
        let current: Option<Entry> = storage.get(ENTRY).await?;
        let now_ms = js_sys::Date::now().max(0.0) as u64;
        let (write, reply) = apply(current, &op, now_ms);
        match write {
            Write::Keep => {}
            Write::Put(entry) => storage.put(ENTRY, entry).await?,
            Write::Delete => {
                storage.delete(ENTRY).await?;
            }
        }
        Response::from_json(&reply)
    }
}

/// Sends `op` to the object named `key`.
async fn call(ns: &ObjectNamespace, key: &str, op: &KeyOp) -> Result<Reply, String> {
    let stub = ns
        .id_from_name(key)
        .and_then(|id| id.get_stub())
        .map_err(|e| format!("state object: {e}"))?;
    let body = serde_json::to_string(op).map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
    let req = Request::new_with_init("https://state.portcullis/", &init)
        .map_err(|e| format!("state request: {e}"))?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| format!("state object: {e}"))?;
    if resp.status_code() != 200 {
        return Err(format!("state object answered {}", resp.status_code()));
    }
    resp.json::<Reply>()
        .await
        .map_err(|e| format!("state object answer: {e}"))
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unexpected(reply: &Reply) -> String {
    format!("the state object answered {reply:?}")
}

fn gcra_op(check: &LimitCheck, now: Timestamp, commit: bool) -> KeyOp {
    KeyOp::Gcra {
        interval_us: check.interval_us,
        burst: check.burst,
        now_us: now.unix_micros(),
        commit,
    }
}

async fn limit(
    ns: &ObjectNamespace,
    check: &LimitCheck,
    now: Timestamp,
    commit: bool,
) -> Result<LimitStatus, String> {
    let reply = call(ns, &check.key, &gcra_op(check, now, commit)).await?;
    reply.status().ok_or_else(|| unexpected(&reply))
}

/// Performs a core state operation on the objects of the namespace bound as
/// [`crate::durable::STATE_BINDING`].
pub async fn perform(env: &Env, op: StateOp) -> StateResult {
    let ns = env
        .durable_object(crate::durable::STATE_BINDING)
        .map_err(|_| portcullis_core::ports::NO_SHARED_STATE.to_owned())?;
    match op {
        StateOp::Get { key } => match call(&ns, &key, &KeyOp::Get).await? {
            Reply::Value(v) => {
                Ok(StateAnswer::Value(v.map(|v| {
                    portcullis_core::b64::decode(&v).unwrap_or_default()
                })))
            }
            other => Err(unexpected(&other)),
        },
        StateOp::Set { key, value, ttl } => {
            let op = KeyOp::Set {
                value: portcullis_core::b64::encode(&value),
                ttl_ms: ms(ttl),
            };
            call(&ns, &key, &op).await.map(|_| StateAnswer::Done)
        }
        StateOp::Delete { key } => call(&ns, &key, &KeyOp::Delete)
            .await
            .map(|_| StateAnswer::Done),
        StateOp::FirstUse { key, ttl } => {
            match call(&ns, &key, &KeyOp::FirstUse { ttl_ms: ms(ttl) }).await? {
                Reply::FirstUse(first) => Ok(StateAnswer::FirstUse(first)),
                other => Err(unexpected(&other)),
            }
        }
        StateOp::RateLimit { checks, now } => {
            // One limit: counted in one step. Several: all looked at first, then counted
            // only when every one allows the request.
            if checks.len() > 1 {
                let mut looked = Vec::with_capacity(checks.len());
                for check in &checks {
                    looked.push(limit(&ns, check, now, false).await?);
                }
                if looked.iter().any(|s| !s.allowed) {
                    return Ok(StateAnswer::Limits(looked));
                }
            }
            let mut counted = Vec::with_capacity(checks.len());
            for check in &checks {
                counted.push(limit(&ns, check, now, true).await?);
            }
            Ok(StateAnswer::Limits(counted))
        }
    }
}
