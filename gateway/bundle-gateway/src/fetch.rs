//! Outbound HTTP from inside an edge bundle, over the runtime's standard
//! `wasi:http/outgoing-handler`: key-set and discovery documents, the provider's token
//! endpoint, a site-verification service. Each call waits (blocking the instance, which
//! serves one request) and is bounded in time and size.

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
use wasip2::io::streams::StreamError;

/// What came back.
#[derive(Debug)]
pub struct Fetched {
    /// The status.
    pub status: u16,
    /// The `Cache-Control` field, if any.
    pub cache_control: Option<String>,
    /// The body (at most the size asked for).
    pub body: Vec<u8>,
}

/// A request to send.
pub struct Call<'a> {
    /// `GET` or `POST`.
    pub post: bool,
    /// An absolute `http` or `https` URL.
    pub url: &'a str,
    /// Header fields.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body (`POST`).
    pub body: &'a [u8],
    /// Connect and first-byte timeout, and the longest pause between body bytes.
    pub timeout: Duration,
    /// Largest body read; a longer one fails the call.
    pub max_body: usize,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sends `call` and reads the whole answer.
pub fn send(call: &Call<'_>) -> Result<Fetched, String> {
    let url = call.url;
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err(format!("{url}: not an http(s) URL")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .as_str();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut entries: Vec<(String, Vec<u8>)> = call
        .headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
    if call.post {
        // A sized body, not a chunked one: some token endpoints and verification services
        // refuse chunked requests.
        entries.push((
            "content-length".to_owned(),
            call.body.len().to_string().into_bytes(),
        ));
    }
    let fields = Fields::from_list(&entries).map_err(|e| format!("{url}: headers: {e:?}"))?;
    let request = OutgoingRequest::new(fields);
    let method = if call.post { Method::Post } else { Method::Get };
    if request.set_method(&method).is_err()
        || request.set_scheme(Some(&scheme)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some(path)).is_err()
    {
        return Err(format!("{url}: not a request target"));
    }
    let body = request
        .body()
        .map_err(|()| format!("{url}: no request body"))?;
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(nanos(call.timeout)));
    let _ = options.set_first_byte_timeout(Some(nanos(call.timeout)));
    let _ = options.set_between_bytes_timeout(Some(nanos(call.timeout)));
    let pending =
        outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{url}: {e:?}"))?;
    if !call.body.is_empty() {
        let stream = body.write().map_err(|()| format!("{url}: request body"))?;
        for chunk in call.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("{url}: sending the body: {e:?}"))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{url}: {e:?}"))?;
    let response = loop {
        if let Some(r) = pending.get() {
            break r;
        }
        pending.subscribe().block();
    };
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("{url}: {e:?}")),
        Err(()) => return Err(format!("{url}: the response was already taken")),
    };
    let status = response.status();
    let cache_control = response
        .headers()
        .get("cache-control")
        .first()
        .and_then(|v| String::from_utf8(v.clone()).ok());
    let incoming = response
        .consume()
        .map_err(|()| format!("{url}: no response body"))?;
    let stream = incoming
        .stream()
        .map_err(|()| format!("{url}: no response body"))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(16 << 10) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > call.max_body {
                    return Err(format!("{url}: the answer exceeds {} bytes", call.max_body));
                }
            }
            Err(StreamError::Closed) => break,
            Err(e) => return Err(format!("{url}: reading the answer: {e:?}")),
        }
    }
    Ok(Fetched {
        status,
        cache_control,
        body,
    })
}
