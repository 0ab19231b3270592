//! Certificates made in the test (with `rcgen`) and the TLS settings of the test kit's
//! HTTPS receiver: a certificate authority that issues server certificates for given
//! names and validity, self-signed certificates, and a rustls server configuration that
//! offers HTTP/2 and HTTP/1.1 by ALPN.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From 2020 to 2100.
    Current,
    /// From 2000 to 2001: expired.
    Expired,
}

/// A certificate and its key, ready for a TLS server.
pub struct ServerIdentity {
    /// The leaf certificate first, then its issuer's (when not self-signed).
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The leaf certificate in PEM, e.g. to trust a self-signed one.
    pub cert_pem: String,
}

impl ServerIdentity {
    /// A rustls server configuration with this identity, offering `alpn` (for example
    /// `[b"h2", b"http/1.1"]`; empty offers none, so clients speak HTTP/1.1).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Like [`ServerIdentity::server_config`], but the handshake requires a client
    /// certificate issued by `client_ca` (mTLS, rustls' `WebPkiClientVerifier`).
    pub fn server_config_requiring_client_certs(
        &self,
        alpn: &[&[u8]],
        client_ca: &TestCa,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(client_ca.cert_der.clone())
            .expect("client CA certificate");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS client certificate and its key in PEM, as a subscription's mTLS credentials take
/// them.
pub struct ClientIdentity {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate in PEM: what a sender configured to trust it reads.
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl TestCa {
    /// A new authority, "Sluice Test CA".
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this
    /// authority.
    pub fn issue(&self, names: &[&str], validity: Validity) -> ServerIdentity {
        let (params, key) = leaf(names, validity);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        ServerIdentity {
            cert_pem: cert.pem(),
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

impl TestCa {
    /// A client certificate (for mTLS) with the common name `name`, signed by this
    /// authority.
    pub fn issue_client(&self, name: &str) -> ClientIdentity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        ClientIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A self-signed server certificate for `names`.
pub fn self_signed(names: &[&str]) -> ServerIdentity {
    let (params, key) = leaf(names, Validity::Current);
    let cert = params.self_signed(&key).expect("certificate");
    ServerIdentity {
        cert_pem: cert.pem(),
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

fn leaf(names: &[&str], validity: Validity) -> (CertificateParams, KeyPair) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("names");
    params
        .distinguished_name
        .push(DnType::CommonName, "Sluice test receiver");
    (params.not_before, params.not_after) = match validity {
        Validity::Current => (date_time_ymd(2020, 1, 1), date_time_ymd(2100, 1, 1)),
        Validity::Expired => (date_time_ymd(2000, 1, 1), date_time_ymd(2001, 1, 1)),
    };
    (params, KeyPair::generate().expect("key"))
}
