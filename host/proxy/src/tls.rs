//! rustls configurations: TLS listeners (TLS 1.2 and 1.3, ALPN h2 and http/1.1, certificates by
//! SNI) and connections to `https://` upstream targets (system roots or a CA file, client
//! certificates, ALPN by the upstream's `protocol`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use wasmgate_config::{Certificate, Config, Diagnostic, Upstream, UpstreamProtocol, UpstreamTls};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Builds the server configuration for `[gateway.tls]`, or every problem with its certificates.
pub(crate) fn server_config(
    config: &Config,
    tls: &wasmgate_config::Tls,
) -> Result<Arc<rustls::ServerConfig>, Vec<Diagnostic>> {
    let certificates: &[Certificate] = &tls.certificates;
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
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![config.diagnostic("gateway.tls", format!("tls setup failed: {e}"))])?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let problem =
                |message: String| vec![config.diagnostic("gateway.tls.client_auth.ca", message)];
            let (path, _) = &auth.ca;
            let roots = ca_roots(&auth.ca).map_err(problem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| {
                problem(format!(
                    "cannot verify clients with {}: {e}",
                    path.display()
                ))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The subject of a verified client certificate (its distinguished name, RFC 4514 style:
/// `CN=app,O=Example`), for plugins and the access log.
pub(crate) fn client_subject(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.subject().to_string().into())
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

/// The rustls client configuration for `upstream`'s `https://` targets (`None` when it has
/// none): the roots or CA that verify them, the client certificate, and ALPN by `protocol`.
pub(crate) fn client_config(
    config: &Config,
    upstream: &Upstream,
) -> Result<Option<Arc<rustls::ClientConfig>>, Diagnostic> {
    if !upstream.targets.iter().any(|t| t.tls) {
        return Ok(None);
    }
    let key = |k: &str| format!("upstreams.{}.tls{k}", upstream.name);
    let problem = |k: &str, message: String| {
        let key = if upstream.tls.is_some() {
            key(k)
        } else {
            format!("upstreams.{}.targets", upstream.name)
        };
        config.diagnostic(&key, message)
    };
    let defaults = UpstreamTls {
        ca: None,
        client: None,
        server_name: None,
        verify: true,
    };
    let tls = upstream.tls.as_ref().unwrap_or(&defaults);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem("", format!("tls setup failed: {e}")))?;
    let builder = if tls.verify {
        let roots = match &tls.ca {
            Some(ca) => ca_roots(ca).map_err(|message| problem(".ca", message))?,
            None => system_roots()
                .map_err(|why| {
                    problem(
                        "",
                        format!(
                            "cannot verify https targets: {why}; set `tls.ca` to the CA file that signed them"
                        ),
                    )
                })?
                .clone(),
        };
        builder.with_root_certificates(roots)
    } else {
        tracing::warn!(
            upstream = %upstream.name,
            "tls.verify = false: the certificates of this upstream's https targets are NOT checked; anyone on the path can impersonate them"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let mut client = match &tls.client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| {
                problem(
                    ".cert",
                    format!(
                        "unusable client certificate {} with key {}: {e}",
                        c.cert_path.display(),
                        c.key_path.display()
                    ),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = match upstream.protocol {
        UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
    };
    Ok(Some(Arc::new(client)))
}

/// The trust anchors of a CA file read by the config, or why it has none rustls can use.
fn ca_roots(
    (path, certs): &(std::path::PathBuf, Vec<CertificateDer<'static>>),
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(format!("no usable CA certificate in {}", path.display()));
    }
    Ok(roots)
}

/// The system's root certificates, read once per process (rustls-native-certs: the platform's
/// store, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn system_roots() -> Result<&'static RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added > 0 {
                Ok(roots)
            } else {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                Err(format!(
                    "no system root certificates found{}",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", errors.join("; "))
                    }
                ))
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `verify = false`: any certificate is accepted, but the handshake's signatures are still
/// checked against it, so the connection is at least encrypted to whoever holds its key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
