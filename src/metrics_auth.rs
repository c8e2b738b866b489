//! `--metrics-secure` as upstream (controller-runtime) means it: `/metrics`
//! over HTTPS (a self-signed certificate made at start-up), for callers the
//! API server authenticates (TokenReview) and authorises to `get` the
//! non-resource URL `/metrics` (SubjectAccessReview). Decisions are cached
//! for a minute per token (by digest; the token itself is not kept).

use std::sync::Arc;
use std::time::Duration;

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
    /// Too many callers waiting for a review already: 429 (not cached).
    Busy,
}

const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: u64 = 1024;
/// Reviews asked of the API server at once.
const REVIEWS_AT_ONCE: usize = 4;
/// Callers waiting for a review beyond those; more get [`Decision::Busy`].
pub const REVIEWS_WAITING: usize = 64;

type Digest = [u8; 32];

/// Cached decisions, kept apart by who could cause them: an unknown token
/// costs nothing to make, so the decisions for callers the API server did
/// not authenticate live in a pool of their own, and filling it (with
/// random tokens) never evicts a known identity's decision. Each pool
/// forgets a decision after [`CACHE_TTL`] and holds at most [`CACHE_MAX`].
struct Decisions {
    identified: moka::sync::Cache<Digest, Decision>,
    unknown: moka::sync::Cache<Digest, Decision>,
}

impl Default for Decisions {
    fn default() -> Self {
        let pool = || {
            moka::sync::Cache::builder()
                .max_capacity(CACHE_MAX)
                .time_to_live(CACHE_TTL)
                .build()
        };
        Decisions {
            identified: pool(),
            unknown: pool(),
        }
    }
}

impl Decisions {
    fn get(&self, d: &Digest) -> Option<Decision> {
        self.identified.get(d).or_else(|| self.unknown.get(d))
    }

    fn put(&self, digest: Digest, decision: Decision) {
        let pool = match decision {
            Decision::Unauthenticated => &self.unknown,
            Decision::Allowed | Decision::Forbidden => &self.identified,
            Decision::Unavailable | Decision::Busy => return,
        };
        pool.insert(digest, decision);
    }
}

pub struct MetricsAuth {
    client: kube::Client,
    cache: Decisions,
    reviews: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
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
            cache: Decisions::default(),
            reviews: tokio::sync::Semaphore::new(REVIEWS_AT_ONCE),
            waiting: Default::default(),
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
        if let Some(d) = self.cache.get(&digest) {
            return d;
        }
        let decision = {
            use std::sync::atomic::Ordering;
            // At most a few reviews at once, and a bounded queue behind
            // them, whatever callers send.
            let permit = match self.reviews.try_acquire() {
                Ok(p) => p,
                Err(_) => {
                    // Given back however the wait ends, also when the
                    // caller goes away while waiting.
                    struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
                    impl Drop for Waiting<'_> {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let waiting = Waiting(&self.waiting);
                    if self.waiting.fetch_add(1, Ordering::SeqCst) >= REVIEWS_WAITING {
                        return Decision::Busy;
                    }
                    let p = self.reviews.acquire().await;
                    drop(waiting);
                    match p {
                        Ok(p) => p,
                        Err(_) => return Decision::Unavailable,
                    }
                }
            };
            let d = self.ask(token).await;
            drop(permit);
            d
        };
        self.cache.put(digest, decision);
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
    use super::*;

    #[test]
    fn unknown_callers_cannot_flush_known_decisions() {
        let c = Decisions::default();
        c.put([1; 32], Decision::Allowed);
        c.put([2; 32], Decision::Forbidden);
        for i in 0..(3 * CACHE_MAX as u32) {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d[31] = 9;
            c.put(d, Decision::Unauthenticated);
        }
        assert_eq!(c.get(&[1; 32]), Some(Decision::Allowed));
        assert_eq!(c.get(&[2; 32]), Some(Decision::Forbidden));
        c.unknown.run_pending_tasks();
        assert!(c.unknown.entry_count() <= CACHE_MAX);
        c.put([3; 32], Decision::Unavailable);
        c.put([4; 32], Decision::Busy);
        assert_eq!(
            (c.get(&[3; 32]), c.get(&[4; 32])),
            (None, None),
            "never cached"
        );
    }

    /// An API server that accepts connections and never answers: every
    /// review waits, and callers past the queue are told Busy at once.
    #[tokio::test]
    async fn the_review_queue_is_bounded() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let auth = MetricsAuth::new(client);
        let token = |i: usize| format!("eyJh.eyJ{i}.c2ln");
        let mut waiting = Vec::new();
        for i in 0..(REVIEWS_AT_ONCE + REVIEWS_WAITING) {
            let auth = auth.clone();
            waiting.push(tokio::spawn(async move {
                auth.check(Some(&format!("Bearer {}", token(i)))).await
            }));
        }
        // Every one of them is asking or queued (a positive signal: the
        // permits are gone and the queue is full).
        while auth.reviews.available_permits() > 0
            || auth.waiting.load(std::sync::atomic::Ordering::SeqCst) < REVIEWS_WAITING
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            auth.check(Some("Bearer eyJh.eyJx.c2ln")).await,
            Decision::Busy
        );
        for w in waiting {
            w.abort();
            let _ = w.await;
        }
        // Callers that went away while queued gave their places back.
        assert_eq!(auth.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
        held.abort();
    }

    #[test]
    fn only_jwt_shaped_tokens_are_reviewed() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("not-a-token"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b c.d"));
    }
}
