//! Keeps a valid `insights-token` Secret in every Lagoon environment
//! namespace (contract section 2).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::token_secrets::{Known, Verified};
use super::{Context, Error, Result};
use crate::cluster::NamespaceMeta;
use crate::contract::{
    lagoon_environment_id, LABEL_DYNAMIC_SECRET, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_ID,
    LABEL_INSIGHTS_TOKEN, LABEL_PROJECT, TOKEN_SECRET_KEY, TOKEN_SECRET_NAME,
};
use crate::settings::Operations;
use crate::tenants::{valid_from_now, Mark, ANNOTATION_REVOKE, ANNOTATION_VALID_FROM};
use crate::token::{Claims, KeyRing};

pub const CONTROLLER: &str = "namespace";
/// Namespaces reconciled at once. Unbounded (kube's default), a start-up
/// with 10,000 environments and no token ran 10,000 reconciles together:
/// 510 MiB peak RSS, kept afterwards (`bash bench/run.sh environments`).
/// Each reconcile is one API call, so a few at once keep the API server
/// busy.
const TOKEN_RECONCILES_AT_ONCE: u16 = 16;
const FIELD_MANAGER: &str = "insights-remote";

pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    // The namespaces are the cluster's store (crate::cluster), filled by
    // the one metadata-only watch every replica runs: this reconciler keeps
    // no second watch and no second copy of them. Every namespace is looked
    // at when a term starts (or the store first completes its list), again
    // after each new full list (the watch may have missed changes), and on
    // a new key or new token settings.
    //
    // The first pass waits until both stores are listed: before that no
    // namespace can be judged (crate::tenants::Tenants::owner_of), and a
    // pass at the namespaces' list alone put every one of them off by a
    // second when the Secrets' list came later (2.95x the API server's
    // ceiling at 1,000 environments, see bench/README.md).
    let cluster = ctx.cluster.clone();
    let lists = WatchStream::new(ctx.cluster.namespace_lists())
        .filter(move |_| std::future::ready(cluster.ready()))
        .map(|_| ());
    let cluster = ctx.cluster.clone();
    let listed = futures::stream::once(async move { cluster.wait_ready().await });
    let lists = futures::stream::select(lists, listed);
    let keys_changed = WatchStream::from_changes(ctx.keys.subscribe()).map(|_| ());
    let ops_changed = WatchStream::from_changes(ctx.ops.subscribe()).map(|_| ());
    // Every one every `token_resync` in any case, all in one pass: a
    // namespace whose token is in order is not kept in the controller's
    // queue between passes (10,000 namespaces held 7.7 MiB there, see
    // bench/README.md), and costs no API call when the pass comes.
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.token_resync,
        ctx.token_resync,
    );
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resync = tokio_stream::wrappers::IntervalStream::new(every).map(|_| ());
    let trigger = futures::stream::select(
        futures::stream::select(lists, resync),
        futures::stream::select(keys_changed, ops_changed),
    );
    info!(resync = ?ctx.token_resync, "keeping environment token Secrets");
    // A namespace the watch shows changed, or whose token Secret changed
    // behind our back (see crate::cluster, followed by name and metadata
    // only), is re-checked at once. A new term trusts nothing an earlier
    // one verified.
    let rechecks = ctx.token_secrets.term_starts();
    // Objects come only from the store (the trigger stream is empty).
    let no_watch = futures::stream::pending::<Result<NamespaceMeta, watcher::Error>>();
    Controller::for_stream(no_watch, ctx.cluster.namespaces.clone())
        .with_config(ControllerConfig::default().concurrency(TOKEN_RECONCILES_AT_ONCE))
        .reconcile_all_on(trigger)
        .reconcile_on(rechecks)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_observed, error_policy, ctx.clone())
        .for_each(|_| async {})
        .await;
    ctx.token_secrets.term_ends();
}

async fn reconcile_observed(ns: Arc<NamespaceMeta>, ctx: Arc<Context>) -> Result<Action> {
    let measure = ctx.measure(CONTROLLER);
    measure.outcome(reconcile(ns, ctx.clone()).await)
}

pub fn error_policy(ns: Arc<NamespaceMeta>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "token reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// What to do about one namespace's token, before looking at its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not ours to mint: tokens off, terminating, or not targeted.
    Skip,
    /// No token can be made; say why on the namespace.
    Refuse {
        reason: &'static str,
        message: String,
    },
    /// The Secret must hold a valid token with these claims.
    Ensure(Claims),
}

pub fn plan(ns: &ObjectMeta, ops: &Operations) -> Plan {
    // Terminating namespaces reject new objects: leave them alone. (A
    // namespace is Terminating exactly when it has a deletion timestamp.)
    let terminating = ns.deletion_timestamp.is_some();
    let no_labels = BTreeMap::new();
    let labels = ns.labels.as_ref().unwrap_or(&no_labels);
    let targeted = ops
        .target_label
        .as_ref()
        .is_none_or(|t| labels.contains_key(t));
    if !ops.tokens_enabled || terminating || !targeted {
        return Plan::Skip;
    }
    let missing: Vec<&'static str> = [LABEL_ENVIRONMENT_ID, LABEL_PROJECT, LABEL_ENVIRONMENT]
        .into_iter()
        .filter(|l| labels.get(*l).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Plan::Refuse {
            reason: "MissingLabels",
            message: format!(
                "no insights token: the namespace lacks label(s) {}",
                missing.join(", ")
            ),
        };
    }
    let id = &labels[LABEL_ENVIRONMENT_ID];
    if lagoon_environment_id(id).is_none() {
        // Every request with such a token would be refused (400).
        return Plan::Refuse {
            reason: "InvalidEnvironmentId",
            message: format!(
                "no insights token: {LABEL_ENVIRONMENT_ID} {:?} is not a Lagoon environment id (an integer from 1 to 2147483647)",
                id.escape_debug().to_string()
            ),
        };
    }
    Plan::Ensure(Claims {
        namespace: ns.name.clone().unwrap_or_default(),
        environment_id: id.clone(),
        project_name: labels[LABEL_PROJECT].clone(),
        environment_name: labels[LABEL_ENVIRONMENT].clone(),
    })
}

/// Whether the Secret already holds a token, valid under the current key,
/// for exactly these claims, with the labels Lagoon looks for.
pub fn up_to_date(existing: Option<&Secret>, claims: &Claims, keys: &KeyRing) -> bool {
    let Some(s) = existing else {
        return false;
    };
    let token = s
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_SECRET_KEY))
        .and_then(|b| std::str::from_utf8(&b.0).ok());
    let labelled = s.labels().get(LABEL_INSIGHTS_TOKEN).map(String::as_str) == Some("true")
        && s.labels().get(LABEL_DYNAMIC_SECRET).map(String::as_str) == Some(TOKEN_SECRET_NAME);
    // The stored token must pass the Secret's own mark (an admin who moved
    // it by hand revoked it too).
    let mark = Mark::of(s.annotations());
    labelled
        && token.is_some_and(|t| {
            !t.ends_with('\n')
                && keys
                    .verify_current_issued(t)
                    .is_ok_and(|(c, iat)| c == *claims && mark.admits(iat))
        })
}

/// Whether this namespace may hold a token for its environment id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The environments are not listed yet: look again shortly.
    Wait,
    /// An older namespace carries the same id: no token here.
    Other(String),
    Mine,
}

/// From [`crate::tenants::Tenants::owner_of`]: a namespace the list does
/// not hold yet (created a moment ago) is taken as its own owner; the
/// ingestion API checks again on every request.
pub fn ownership(namespace: &str, owner: Option<Option<String>>) -> Ownership {
    match owner {
        None => Ownership::Wait,
        Some(Some(o)) if o != namespace => Ownership::Other(o),
        Some(_) => Ownership::Mine,
    }
}

/// The tokens-valid-from mark the written Secret carries: none for a
/// Secret that never had one (the Go original's tokens keep working), the
/// same for a re-mint (a new key, new claims), now when the Secret is new
/// (a deleted Secret revokes what it held) or a revocation was asked for.
pub fn valid_from(existing: Option<&Secret>) -> Option<String> {
    valid_from_marks(existing.map(|s| {
        (
            s.annotations().contains_key(ANNOTATION_REVOKE),
            s.annotations()
                .get(ANNOTATION_VALID_FROM)
                .map(String::as_str),
        )
    }))
}

/// [`valid_from`] from an existing Secret's marks only: whether it asks
/// for a revocation, and its tokens-valid-from (as its store lists them).
pub fn valid_from_marks(existing: Option<(bool, Option<&str>)>) -> Option<String> {
    let Some((revoke, from)) = existing else {
        return Some(valid_from_now().0);
    };
    match Mark::from_marks(revoke, from) {
        Mark::None => None,
        Mark::From(_) => from.map(str::to_string),
        Mark::All => Some(valid_from_now().0),
    }
}

/// The token Secret as it should be.
pub fn token_secret(namespace: &str, token: String, valid_from: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            annotations: valid_from
                .map(|v| BTreeMap::from([(ANNOTATION_VALID_FROM.to_string(), v)])),
            labels: Some(BTreeMap::from([
                (LABEL_INSIGHTS_TOKEN.to_string(), "true".to_string()),
                (
                    LABEL_DYNAMIC_SECRET.to_string(),
                    TOKEN_SECRET_NAME.to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_SECRET_KEY.to_string(),
            ByteString(token.into_bytes()),
        )])),
        ..Default::default()
    }
}

/// How a token Secret that must be written is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Known to be absent: create it (an apply if it exists after all).
    Create,
    /// There may be one: server-side apply, which updates in place.
    Apply,
}

/// The write for what the Secret cache knows.
pub fn write_kind(known: &Known) -> Write {
    match known {
        Known::Absent => Write::Create,
        Known::Good | Known::Unknown | Known::Stale { .. } => Write::Apply,
    }
}

/// Writes the token Secret. [`Write::Create`] is a plain create, the
/// cheapest write for the API server (an apply also works out field
/// ownership: `bench/README.md`, tokens); if the Secret exists after all
/// (the cache had not seen it yet), the apply follows. The apply updates in
/// place: never delete first, since Lagoon mounts this Secret with
/// `optional: false` and a pod starting in the gap would fail.
///
/// A role cannot grant a create by resource name (Kubernetes authorises a
/// create before the name is known), so a least-privilege role such as
/// `config/rbac/role.yaml` refuses it; the first refusal sets
/// `create_refused` and every later write is the apply, which that role
/// grants by name. The lagoon-remote chart's role grants the create.
pub async fn write_token(
    api: &Api<Secret>,
    secret: &Secret,
    how: Write,
    create_refused: &AtomicBool,
) -> kube::Result<Secret> {
    if how == Write::Create && !create_refused.load(Ordering::Relaxed) {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&params, secret).await {
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            // RBAC's refusal ("... cannot create resource ..."), not
            // another 403 such as a namespace being terminated, which the
            // apply would meet too.
            Err(kube::Error::Api(s)) if s.is_forbidden() && s.message.contains("cannot create") => {
                if !create_refused.swap(true, Ordering::Relaxed) {
                    info!("RBAC does not allow creating Secrets (a role cannot grant a create by name); token Secrets are written with server-side apply");
                }
            }
            other => return other,
        }
    }
    api.patch(
        TOKEN_SECRET_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(secret),
    )
    .await
}

/// Writes the new token and mark and removes the revocation request, in
/// one merge patch (the request is an admin's annotation, which a
/// server-side apply of ours could not remove).
async fn revoke(api: &Api<Secret>, secret: &Secret) -> kube::Result<Secret> {
    let mut patch = serde_json::to_value(secret).map_err(kube::Error::SerdeError)?;
    patch["metadata"]["annotations"][ANNOTATION_REVOKE] = serde_json::Value::Null;
    api.patch(
        TOKEN_SECRET_NAME,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(patch),
    )
    .await
}

/// Carries out [`plan`] and [`ownership`] for one namespace.
pub async fn reconcile(ns: Arc<NamespaceMeta>, ctx: Arc<Context>) -> Result<Action> {
    let ops = ctx.ops.borrow().clone();
    let claims = match plan(&ns.metadata, &ops) {
        Plan::Skip => return Ok(Action::await_change()),
        Plan::Refuse { reason, message } => {
            ctx.event(
                ns.as_ref(),
                EventType::Warning,
                reason,
                "MintToken",
                message,
            )
            .await;
            return Ok(Action::await_change());
        }
        Plan::Ensure(claims) => claims,
    };
    match ownership(&ns.name_any(), ctx.tenants.owner_of(&claims.environment_id)) {
        Ownership::Wait => Ok(Action::requeue(Duration::from_secs(1))),
        Ownership::Other(owner) => {
            ctx.event(
                ns.as_ref(),
                EventType::Warning,
                "DuplicateEnvironmentId",
                "MintToken",
                format!(
                    "no insights token: {LABEL_ENVIRONMENT_ID} {} is already held by namespace {owner}; tokens of this namespace are refused",
                    claims.environment_id
                ),
            )
            .await;
            // Minted once the other namespace is gone.
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Ownership::Mine => {
            ensure_token(&ctx, &ns.name_any(), &claims).await?;
            // The next look comes with the periodic pass (see `run`).
            Ok(Action::await_change())
        }
    }
}

/// Makes the namespace's token Secret hold a valid token for `claims`:
/// nothing when this process verified it already, a GET only when the
/// store cannot vouch, a new token when it is missing, stale or revoked.
async fn ensure_token(ctx: &Context, name: &str, claims: &Claims) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), name);
    let keys = ctx.keys.borrow().clone();
    let key = keys.fingerprint();
    let known = ctx.token_secrets.known(&ctx.cluster, name, &key, claims);
    let existing = match &known {
        Known::Good => return Ok(()),
        Known::Absent | Known::Stale { .. } => None,
        Known::Unknown => api.get_opt(TOKEN_SECRET_NAME).await?,
    };
    let verified =
        |s: &Secret| Verified::new(&s.resource_version().unwrap_or_default(), &key, claims);
    if let Some(s) = existing
        .as_ref()
        .filter(|s| up_to_date(Some(s), claims, &keys))
    {
        ctx.token_secrets.verified(name, verified(s));
        return Ok(());
    }
    // The existing Secret's marks: as read, or (stale) as listed.
    let marks = match (&known, &existing) {
        (Known::Stale { revoke, valid_from }, _) => Some((*revoke, valid_from.as_deref())),
        (_, Some(s)) => Some((
            s.annotations().contains_key(ANNOTATION_REVOKE),
            s.annotations()
                .get(ANNOTATION_VALID_FROM)
                .map(String::as_str),
        )),
        (_, None) => None,
    };
    // The mark first, then the token: its `iat` is at or after the mark.
    let valid_from = valid_from_marks(marks);
    let revoking = marks.is_some_and(|(r, f)| Mark::from_marks(r, f) == Mark::All);
    let renewed = marks.is_some();
    let secret = token_secret(name, keys.mint(claims)?, valid_from);
    let written = if revoking {
        revoke(&api, &secret).await?
    } else {
        write_token(&api, &secret, write_kind(&known), &ctx.token_create_refused).await?
    };
    if revoking {
        info!(namespace = %name, "environment tokens revoked on request");
        ctx.metrics.tokens_revoked.inc();
    }
    // An admin's revocation request that reached the Secret meanwhile
    // stays on what we wrote (an apply of ours cannot remove it): vouch
    // for nothing, so its event is looked at and carried out.
    if !written.annotations().contains_key(ANNOTATION_REVOKE) {
        ctx.token_secrets.verified(name, verified(&written));
    }
    info!(namespace = %name, renewed, "environment token written");
    ctx.counters.add(&ctx.counters.tokens_issued);
    ctx.metrics.tokens_minted.inc();
    ctx.status_changed.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::KeyRing;

    fn ns(labels: &[(&str, &str)], terminating: bool) -> ObjectMeta {
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some("demo-main".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if terminating {
            n.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        n.metadata
    }

    fn ops(tokens: bool, target: Option<&str>) -> Operations {
        Operations {
            burn_after_reading: false,
            forwarding_enabled: true,
            deferred_enabled: true,
            mins_between_retries: 3,
            max_retries: 3,
            require_core_enabled: true,
            tokens_enabled: tokens,
            target_label: target.map(String::from),
            dependency_track: Default::default(),
            build_scanner: Default::default(),
        }
    }

    const LAGOON: &[(&str, &str)] = &[
        ("lagoon.sh/environmentId", "42"),
        ("lagoon.sh/project", "demo"),
        ("lagoon.sh/environment", "main"),
    ];

    #[test]
    fn a_secret_known_absent_is_created_any_other_applied() {
        for (known, want) in [
            (Known::Absent, Write::Create),
            (Known::Unknown, Write::Apply),
            (Known::Good, Write::Apply),
            (
                Known::Stale {
                    revoke: false,
                    valid_from: None,
                },
                Write::Apply,
            ),
        ] {
            assert_eq!(write_kind(&known), want, "{known:?}");
        }
    }

    #[test]
    fn plan_table() {
        let claims = Claims {
            namespace: "demo-main".into(),
            environment_id: "42".into(),
            project_name: "demo".into(),
            environment_name: "main".into(),
        };
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l: Vec<(&str, &str)> = LAGOON.to_vec();
            for (k, v) in extra {
                l.retain(|(key, _)| key != k);
                l.push((k, v));
            }
            l
        };
        let refused = |reason: &str, n: &ObjectMeta, o: &Operations| match plan(n, o) {
            Plan::Refuse { reason: r, .. } => r == reason,
            _ => false,
        };
        assert_eq!(
            plan(&ns(LAGOON, false), &ops(true, None)),
            Plan::Ensure(claims.clone())
        );
        assert_eq!(
            plan(&ns(LAGOON, false), &ops(false, None)),
            Plan::Skip,
            "tokens off"
        );
        assert_eq!(
            plan(&ns(LAGOON, true), &ops(true, None)),
            Plan::Skip,
            "terminating"
        );
        assert_eq!(
            plan(&ns(LAGOON, false), &ops(true, Some("t"))),
            Plan::Skip,
            "not targeted"
        );
        assert_eq!(
            plan(&ns(&with(&[("t", "")]), false), &ops(true, Some("t"))),
            Plan::Ensure(claims),
            "targeted"
        );
        assert!(refused(
            "MissingLabels",
            &ns(&[("lagoon.sh/project", "demo")], false),
            &ops(true, None)
        ));
        assert!(refused(
            "MissingLabels",
            &ns(&with(&[("lagoon.sh/environment", "")]), false),
            &ops(true, None)
        ));
        for bad in ["042", "-1", "0", "2147483648", "4x"] {
            assert!(
                refused(
                    "InvalidEnvironmentId",
                    &ns(&with(&[("lagoon.sh/environmentId", bad)]), false),
                    &ops(true, None)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn up_to_date_needs_a_valid_token_for_these_claims_and_the_labels() {
        let keys = KeyRing::new("0123456789abcdef0123456789abcdef-current").unwrap();
        let other = KeyRing::new("0123456789abcdef0123456789abcdef-another").unwrap();
        let Plan::Ensure(claims) = plan(&ns(LAGOON, false), &ops(true, None)) else {
            panic!()
        };
        let good = token_secret("demo-main", keys.mint(&claims).unwrap(), None);
        assert!(up_to_date(Some(&good), &claims, &keys));
        assert!(!up_to_date(None, &claims, &keys));
        assert!(!up_to_date(Some(&good), &claims, &other), "another key");
        let mut moved = claims.clone();
        moved.environment_name = "dev".into();
        assert!(!up_to_date(Some(&good), &moved, &keys), "other claims");
        let mut unlabelled = good.clone();
        unlabelled.metadata.labels = None;
        assert!(!up_to_date(Some(&unlabelled), &claims, &keys));
        let newline = token_secret(
            "demo-main",
            format!("{}\n", keys.mint(&claims).unwrap()),
            None,
        );
        assert!(!up_to_date(Some(&newline), &claims, &keys));
    }

    #[test]
    fn a_revocation_request_is_never_up_to_date_and_moves_the_mark() {
        let keys = KeyRing::new("0123456789abcdef0123456789abcdef-current").unwrap();
        let Plan::Ensure(claims) = plan(&ns(LAGOON, false), &ops(true, None)) else {
            panic!()
        };
        let old_mark = "2026-01-01T00:00:00Z".to_string();
        let marked = token_secret(
            "demo-main",
            keys.mint(&claims).unwrap(),
            Some(old_mark.clone()),
        );
        assert!(up_to_date(Some(&marked), &claims, &keys));
        assert_eq!(
            valid_from(Some(&marked)),
            Some(old_mark.clone()),
            "a re-mint keeps the mark"
        );
        let go = token_secret("demo-main", keys.mint(&claims).unwrap(), None);
        assert_eq!(
            valid_from(Some(&go)),
            None,
            "never revoked: no mark (Go's tokens keep working)"
        );
        let fresh = valid_from(None).expect("a new Secret revokes whatever came before");
        assert!(fresh.parse::<k8s_openapi::jiff::Timestamp>().is_ok());
        let mut asked = marked.clone();
        asked
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_REVOKE.into(), "yes".into());
        assert!(!up_to_date(Some(&asked), &claims, &keys));
        // A mark moved past the stored token by hand: re-minted too.
        let later = token_secret(
            "demo-main",
            keys.mint(&claims).unwrap(),
            Some("2999-01-01T00:00:00Z".into()),
        );
        assert!(!up_to_date(Some(&later), &claims, &keys));
        let moved = valid_from(Some(&asked)).unwrap();
        assert!(moved > old_mark, "{moved} after {old_mark}");
    }

    #[test]
    fn ownership_table() {
        for (owner, want) in [
            (None, Ownership::Wait),
            (Some(None), Ownership::Mine),
            (Some(Some("demo-main".to_string())), Ownership::Mine),
            (
                Some(Some("older".to_string())),
                Ownership::Other("older".into()),
            ),
        ] {
            assert_eq!(ownership("demo-main", owner.clone()), want, "{owner:?}");
        }
    }
}
