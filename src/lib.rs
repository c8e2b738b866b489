//! insights-remote: carries Lagoon insights from a cluster to Lagoon core.

pub mod broker;
pub mod cluster;
pub mod contract;
pub mod controller;
pub mod dependency_track;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod metrics_auth;
pub mod payload;
pub mod postprocess;
pub mod run;
pub mod server;
pub mod settings;
/// The custom resource's types (they live with the settings they overlay).
pub use settings::crd;
pub mod tenants;
pub mod token;

/// Everything that can go wrong at the level of the whole program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<settings::Invalid> for Error {
    fn from(e: settings::Invalid) -> Self {
        Error::Config(e.0)
    }
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Kube(_) => "kube",
            Error::Io(_) => "io",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
