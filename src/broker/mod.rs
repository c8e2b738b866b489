//! The confirmed publisher: one long-lived AMQP connection and one channel in
//! confirm mode, supervised by a task that reconnects after the broker goes
//! away and swaps connections when the settings change.
//!
//! Reconnection is ours rather than lapin's `enable_auto_recover`, because
//! lapin gives up after a fixed number of attempts, while an operator must
//! keep trying for as long as it runs, at the admin's interval, and must know
//! at every moment whether it can publish (readiness, 503s, the CR status).
//!
//! | file | holds |
//! | --- | --- |
//! | `publisher.rs` | [`Publisher`]: publish and wait for the confirm, [`PublishError`], [`BrokerState`] |
//! | `supervisor.rs` | the task that connects, watches and reconnects |
//! | `settings.rs` | the URI, TLS configuration and socket from [`BrokerSettings`] (defined in `crate::settings`) |
//! | `tls.rs` | TLS without verification, for `RABBITMQ_VERIFY=false` |

mod publisher;
mod settings;
mod supervisor;
mod tls;

pub use crate::settings::{
    BrokerSettings, TlsSettings, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES,
};
pub use publisher::{BrokerState, PublishError, Publisher};
