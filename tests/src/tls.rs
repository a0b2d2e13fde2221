//! A test certificate authority: certificates for the gateway's TLS listener (and backends),
//! minted per test with rcgen, and curl invoked against them with the CA as its only trust.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, SanType,
};

/// A certificate authority of one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// `sha256/BASE64` of the key's SubjectPublicKeyInfo (an HPKP-style pin).
    pub pin: String,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names, wildcards allowed) with common name
    /// `cn`, signed by this CA.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        self.leaf_with(cn, names, &[])
    }

    /// As [`TestCa::leaf`], with URI SANs too (a SPIFFE X.509-SVID carries its ID so).
    pub fn leaf_with(&self, cn: &str, names: &[&str], uris: &[&str]) -> Leaf {
        use base64::Engine as _;
        use sha2::Digest as _;
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let spki = sha2::Sha256::digest(key.subject_public_key_info());
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
            pin: format!(
                "sha256/{}",
                base64::engine::general_purpose::STANDARD.encode(spki)
            ),
        }
    }
}

/// Runs curl against `https://{host}:{port}{path}` resolved to 127.0.0.1, trusting only
/// `ca` (a PEM file); `-v` so the served certificate's subject is in stderr.
pub fn curl(ca: &Path, host: &str, port: u16, path: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl runs")
}

/// The served certificate's common name, from curl's `-v` output.
pub fn served_cn(out: &Output) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines().find_map(|l| {
        let subject = l.split_once("subject: ")?.1;
        Some(
            subject
                .split(['/', ','])
                .find_map(|part| part.trim().strip_prefix("CN="))?
                .trim()
                .to_owned(),
        )
    })
}

/// An HTTPS backend on 127.0.0.1 serving `leaf` (rustls): it counts the requests that
/// reached it (a handshake the client abandons delivers none), and remembers the client
/// certificate of the last one. With `client_ca`, clients must present a certificate it
/// signed (mTLS).
pub struct TlsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received (request heads read after a completed handshake).
    pub requests: Arc<AtomicUsize>,
    /// Connections whose handshake failed.
    pub failed_handshakes: Arc<AtomicUsize>,
    /// The client certificate (DER) of the last request, if one was presented.
    pub client_cert: Arc<Mutex<Option<Vec<u8>>>>,
}

impl TlsBackend {
    /// Starts the backend; it answers `{"backend": name}`.
    pub fn start(name: &'static str, leaf: &Leaf, client_ca: Option<&TestCa>) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let client_cert = Arc::new(Mutex::new(None));
        let (r, f, c) = (requests.clone(), failed.clone(), client_cert.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { continue };
                let (config, r, f, c) = (config.clone(), r.clone(), f.clone(), c.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let mut conn = rustls::ServerConnection::new(config).unwrap();
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            f.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    let presented = conn
                        .peer_certificates()
                        .and_then(|certs| certs.first().map(|c| c.to_vec()));
                    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match tls.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        if head.is_empty() {
                            return;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        *c.lock().unwrap() = presented.clone();
                        let body = format!("{{\"backend\":\"{name}\"}}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.get_mut().write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                        let _ = tls.get_mut().flush();
                    }
                });
            }
        });
        TlsBackend {
            addr,
            requests,
            failed_handshakes: failed,
            client_cert,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
