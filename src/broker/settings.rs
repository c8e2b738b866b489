//! The broker settings as lapin needs them: the AMQP URI, the TLS
//! configuration, the socket to probe, and error texts without the password.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::settings::BrokerSettings;

impl BrokerSettings {
    /// The AMQP URI, credentials percent-encoded. Contains the password:
    /// never log it.
    pub(super) fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "amqps" } else { "amqp" };
        let host = self
            .host
            .trim_start_matches("amqp://")
            .trim_start_matches("amqps://")
            .trim_end_matches('/');
        format!(
            "{scheme}://{}:{}@{host}/{}?heartbeat=20&connection_timeout=5000",
            crate::contract::percent_encode(&self.username),
            crate::contract::percent_encode(&self.password),
            crate::contract::percent_encode(&self.vhost)
        )
    }

    pub(super) fn tls_config(&self) -> OwnedTLSConfig {
        let Some(tls) = &self.tls else {
            return OwnedTLSConfig::default();
        };
        let identity = match (&tls.client_cert_pem, &tls.client_key_pem) {
            (Some(pem), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: pem.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        OwnedTLSConfig {
            identity,
            cert_chain: tls.ca_pem.clone(),
        }
    }
}

/// lapin errors may echo the URI; keep the password out.
pub(super) fn redact(msg: &str, settings: &BrokerSettings) -> String {
    if settings.password.is_empty() {
        return msg.to_string();
    }
    msg.replace(&settings.password, "***")
        .replace(&crate::contract::percent_encode(&settings.password), "***")
}

/// host:port of the broker (5672, or 5671 with TLS, when no port is given).
pub(super) fn socket_target(settings: &BrokerSettings) -> (String, u16) {
    let host = settings
        .host
        .trim_start_matches("amqp://")
        .trim_start_matches("amqps://")
        .trim_end_matches('/');
    let default_port = if settings.tls.is_some() { 5671 } else { 5672 };
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse() {
            Ok(port) => (h.trim_matches(['[', ']']).to_string(), port),
            Err(_) => (host.to_string(), default_port),
        },
        _ => (host.trim_matches(['[', ']']).to_string(), default_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TlsSettings;

    #[test]
    fn uri_encodes_credentials_and_vhost() {
        let s = BrokerSettings {
            host: "rabbit:5672".into(),
            username: "us er".into(),
            password: "p@ss/word".into(),
            vhost: "/".into(),
            ..Default::default()
        };
        assert_eq!(
            s.uri(),
            "amqp://us%20er:p%40ss%2Fword@rabbit:5672/%2F?heartbeat=20&connection_timeout=5000"
        );
        let tls = BrokerSettings {
            tls: Some(TlsSettings::default()),
            ..s.clone()
        };
        assert!(tls.uri().starts_with("amqps://"));
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn redact_hides_password() {
        let s = BrokerSettings {
            password: "hunter2-secret".into(),
            ..Default::default()
        };
        assert_eq!(
            redact("failed amqp://g:hunter2-secret@h", &s),
            "failed amqp://g:***@h"
        );
    }
}
