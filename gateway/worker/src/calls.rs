//! The worker's outbound calls with the Fetch API: the provider's token endpoint (browser
//! sign-in and refresh) and a site-verification service, each bounded in time and size.

use portcullis_core::ports::client::MAX_TOKEN_RESPONSE;
use portcullis_core::ports::{CallAnswer, CallOp, CallResult};
use portcullis_core::{KeyStore, siteverify_body, siteverify_result};
use worker::Fetch;

/// Longest a call may take (as the native host).
const TIMEOUT_MS: u32 = 5_000;
/// Largest site-verification answer read (as the native host).
const MAX_SITEVERIFY_ANSWER: usize = 64 << 10;

/// POSTs a form to `url`: the status and at most `max` bytes of body.
async fn post_form(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    let fields = web_sys::Headers::new().map_err(|_| "headers".to_owned())?;
    let _ = fields.append("content-type", "application/x-www-form-urlencoded");
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|_| format!("bad header {name}"))?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(&fields);
    init.set_body(&wasm_bindgen::JsValue::from_str(body));
    init.set_redirect(web_sys::RequestRedirect::Manual);
    let deadline = web_sys::AbortSignal::timeout_with_u32(TIMEOUT_MS);
    init.set_signal(Some(&deadline));
    let request = web_sys::Request::new_with_str_and_init(url, &init)
        .map_err(|_| format!("{url}: not a request target"))?;
    let mut resp = Fetch::Request(worker::Request::from(request))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status_code();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if bytes.len() > max {
        return Err(format!("{url}: the answer exceeds {max} bytes"));
    }
    Ok((status, bytes))
}

/// Performs an outbound call the decision waits for.
pub async fn perform<K>(keys: &std::cell::RefCell<KeyStore<K>>, op: CallOp) -> CallResult {
    match op {
        CallOp::Token {
            issuer,
            endpoint,
            authorization,
            body,
        } => {
            let endpoint = {
                let keys = keys.borrow();
                let endpoints = keys
                    .endpoints(issuer)
                    .ok_or("the provider has not been discovered yet")?;
                endpoint
                    .url(endpoints)
                    .ok_or_else(|| format!("the provider offers no {} endpoint", endpoint.name()))?
                    .to_owned()
            };
            let all = [
                ("accept", "application/json"),
                ("authorization", authorization.as_str()),
            ];
            // An empty `authorization`: the client authenticates in the body.
            let headers = if authorization.is_empty() {
                &all[..1]
            } else {
                &all[..]
            };
            let (status, body) = post_form(&endpoint, headers, &body, MAX_TOKEN_RESPONSE).await?;
            Ok(CallAnswer::Token { status, body })
        }
        CallOp::SiteVerify {
            site,
            site_token,
            remote_ip,
        } => {
            let form = siteverify_body(&site.secret, &site_token, remote_ip);
            let (status, body) =
                post_form(&site.verify_url, &[], &form, MAX_SITEVERIFY_ANSWER).await?;
            if !(200..300).contains(&status) {
                return Err(format!("{} answered {status}", site.verify_url));
            }
            siteverify_result(&body).map(CallAnswer::SiteVerified)
        }
    }
}
