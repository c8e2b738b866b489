//! `RABBITMQ_VERIFY=false`, as upstream honours it: TLS without checking
//! the broker's certificate (encrypted, not authenticated).

use std::sync::Arc;

use lapin::{Connection, ConnectionProperties};

use crate::settings::{BrokerSettings, TlsSettings};

use super::settings::*;

/// amqps without checking the broker's certificate (RABBITMQ_VERIFY=false):
/// the handshake's signatures are still checked, the chain and name are not.
pub(super) async fn connect_unverified(
    settings: &BrokerSettings,
    tls: &TlsSettings,
    props: ConnectionProperties,
) -> Result<Arc<Connection>, String> {
    use lapin::tcp::RustlsConnector;
    let config = unverified_client_config(tls)?;
    let connector = Arc::new(RustlsConnector::from(Arc::new(config)));
    let uri: lapin::uri::AMQPUri = settings
        .uri()
        .parse()
        .map_err(|e: String| redact(&e, settings))?;
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    let conn = Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.clone();
            let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
            let stream = lapin::AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(stream.into_rustls(&connector, &host).await?)
        },
        props,
    )
    .await
    .map_err(|e| redact(&e.to_string(), settings))?;
    Ok(Arc::new(conn))
}

pub(super) fn unverified_client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)));
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any server certificate; checks the handshake signatures.
#[derive(Debug)]
pub(super) struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
