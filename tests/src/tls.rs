//! A test certificate authority: certificates for the gateway's TLS listener (and backends),
//! minted per test with rcgen, and curl invoked against them with the CA as its only trust.

use std::path::Path;
use std::process::{Command, Output};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
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
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
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
