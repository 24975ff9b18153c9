//! TLS listeners' rustls configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1, certificates by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use wasmgate_config::{Certificate, Config, Diagnostic};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Builds the server configuration for `[gateway.tls]`, or every problem with its certificates.
pub(crate) fn server_config(
    config: &Config,
    certificates: &[Certificate],
) -> Result<Arc<rustls::ServerConfig>, Vec<Diagnostic>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    let mut problems = Vec::new();
    for (i, cert) in certificates.iter().enumerate() {
        let problem = |message: String| Diagnostic {
            file: config.file.clone(),
            location: Some(cert.location),
            key: format!("gateway.tls.certificates[{i}]"),
            message,
        };
        let key = match provider.key_provider.load_private_key(cert.key.clone_key()) {
            Ok(k) => k,
            Err(e) => {
                problems.push(problem(format!(
                    "unusable private key in {}: {e}",
                    cert.key_path.display()
                )));
                continue;
            }
        };
        let certified = CertifiedKey::new(cert.chain.clone(), key);
        if let Err(e) = certified.keys_match() {
            problems.push(problem(format!(
                "the key in {} does not belong to the certificate in {}: {e}",
                cert.key_path.display(),
                cert.cert_path.display()
            )));
            continue;
        }
        let names = match names(&cert.chain[0]) {
            Ok(n) => n,
            Err(e) => {
                problems.push(problem(format!(
                    "cannot read the certificate in {}: {e}",
                    cert.cert_path.display()
                )));
                continue;
            }
        };
        resolver.add(Arc::new(certified), names);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![config.diagnostic("gateway.tls", format!("tls setup failed: {e}"))])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The DNS names a certificate is valid for: its subjectAltName DNS entries, or its common name
/// when it has none (lowercase).
fn names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Picks a certificate by SNI: exact name, then `*.` wildcard for the first label, then the first
/// configured certificate.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, key: Arc<CertifiedKey>, names: Vec<String>) {
        for name in names {
            // The first certificate that names a host keeps it.
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()),
                None => self.exact.entry(name),
            }
            .or_insert_with(|| key.clone());
        }
        self.default.get_or_insert(key);
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&sni) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = sni.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}
