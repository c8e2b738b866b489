//! `--metrics-secure` as upstream (controller-runtime) means it: `/metrics`
//! over HTTPS (a self-signed certificate made at start-up), for callers the
//! API server authenticates (TokenReview) and authorises to `get` the
//! non-resource URL `/metrics` (SubjectAccessReview). Decisions are cached
//! for a minute per token (by digest; the token itself is not kept).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use tracing::warn;

/// What a request to `/metrics` gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No token, or one the API server does not accept: 401.
    Unauthenticated,
    /// A valid identity without `get` on `/metrics`: 403.
    Forbidden,
    /// The API server could not be asked: 503 (not cached).
    Unavailable,
}

const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 1024;

pub struct MetricsAuth {
    client: kube::Client,
    cache: Mutex<HashMap<[u8; 32], (Decision, Instant)>>,
    reviews: tokio::sync::Semaphore,
}

fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    token.len() <= 16 * 1024
        && parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

impl MetricsAuth {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(MetricsAuth {
            client,
            cache: Mutex::new(HashMap::new()),
            reviews: tokio::sync::Semaphore::new(4),
        })
    }

    /// The decision for an `Authorization` header value.
    pub async fn check(&self, authorization: Option<&str>) -> Decision {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Decision::Unauthenticated;
        };
        // Only what could be a ServiceAccount token (a JWT) is sent to the
        // API server: random strings cost no TokenReview.
        if !looks_like_jwt(token) {
            return Decision::Unauthenticated;
        }
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some((d, at)) = self.cache.lock().expect("cache lock").get(&digest) {
            if at.elapsed() < CACHE_TTL {
                return *d;
            }
        }
        let decision = {
            // At most a few reviews at once, whatever callers send.
            let _permit = self.reviews.acquire().await;
            self.ask(token).await
        };
        if decision != Decision::Unavailable {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, (decision, Instant::now()));
        }
        decision
    }

    async fn ask(&self, token: &str) -> Decision {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "metrics: TokenReview failed");
                return Decision::Unavailable;
            }
        };
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Decision::Unauthenticated;
        };
        let user = status.user.unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
        {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Decision::Allowed,
            Ok(_) => Decision::Forbidden,
            Err(e) => {
                warn!(error = %e, "metrics: SubjectAccessReview failed");
                Decision::Unavailable
            }
        }
    }
}

/// A self-signed certificate for the metrics listener, as controller-runtime
/// makes one when none is given.
pub fn self_signed_tls() -> std::io::Result<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "insights-remote-metrics".to_string(),
    ])
    .map_err(std::io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_jwt_shaped_tokens_are_reviewed() {
        assert!(super::looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!super::looks_like_jwt("not-a-token"));
        assert!(!super::looks_like_jwt("a.b"));
        assert!(!super::looks_like_jwt("a..c"));
        assert!(!super::looks_like_jwt("a.b c.d"));
    }
}
