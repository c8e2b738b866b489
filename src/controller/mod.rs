//! The operator: reconcilers for insights ConfigMaps, Lagoon namespaces,
//! build pods and the InsightsRemoteConfig, sharing one [`Context`].
//!
//! | file | holds |
//! | --- | --- |
//! | `context.rs` | [`Context`]: what every reconciler reads (settings watches, stores, counters) |
//! | `manager.rs` | [`run`]: the cluster watches, leadership (the Lease) and each term's reconcilers, stopped by a [`CancellationToken`] |
//! | `configmap/` | forwarding insights ConfigMaps: plan (`decide`, `settle`) and effects |
//! | `namespace.rs` | the token reconciler: a token Secret per environment (`plan`) |
//! | `token_secrets.rs` | which token Secrets this process verified or wrote |
//! | `build.rs` | the post-build scanner (`plan`) |
//! | `config/` | following the InsightsRemoteConfig and writing its status |

pub mod build;
pub mod config;
pub mod configmap;
mod context;
mod manager;
pub mod namespace;
pub mod token_secrets;

pub use context::{
    Baseline, ConfigHealth, Context, Counters, Parts, ReconcileMeasurer, DEFAULT_TOKEN_RESYNC,
};
pub use manager::{run, LeaseOptions, RunOptions};
pub use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("token: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.is_forbidden() => "forbidden",
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::Token(_) => "token",
            Error::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// RFC 3339 UTC to the second, as the Go original writes it.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
