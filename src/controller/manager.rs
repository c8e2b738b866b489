//! Runs the operator: the cluster watches on every replica, and, while this
//! replica leads (by the Lease, or always without one), a term of
//! reconcilers. Everything stops through [`CancellationToken`]s: the
//! process's, and a child per leadership term.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{build, config, configmap, namespace, Context, Error, Result};

/// Which reconcilers run, and how leadership is decided.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub forward: bool,
    pub tokens: bool,
    pub concurrency: u16,
    /// None: this process always leads.
    pub lease: Option<LeaseOptions>,
}

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_secs: u64,
    pub grace_secs: u64,
}

/// Runs until `shutdown` fires. Every replica follows the configuration (so
/// its ingestion API has the current key); only the leader reconciles and
/// writes status. Losing the Lease stops the reconcilers at once.
pub async fn run(ctx: Arc<Context>, opts: RunOptions, shutdown: CancellationToken) -> Result<()> {
    let mut follower = tokio::spawn(config::run(ctx.clone(), shutdown.clone()));
    // Every replica checks tokens against the environments as they are.
    let tenants = tokio::spawn(watch_cluster(ctx.clone(), opts.tokens, shutdown.clone()));
    // The configuration follower ends only at shutdown: ending before is a
    // failure (the settings and the status would freeze).
    let follower_failed = async {
        let ended = (&mut follower).await;
        if shutdown.is_cancelled() {
            futures::future::pending::<()>().await;
        }
        ended
    };
    let res = tokio::select! {
        r = reconcile(ctx, &opts, shutdown.clone()) => r,
        ended = follower_failed => Err(Error::Invalid(format!(
            "the configuration follower stopped: {ended:?}"
        ))),
    };
    if res.is_err() {
        // Failing: the caller ends the process; the follower goes with it.
        follower.abort();
        tenants.abort();
    } else {
        if !follower.is_finished() {
            let _ = follower.await;
        }
        let _ = tenants.await;
    }
    res
}

/// Leads (with or without a Lease) until shutdown.
async fn reconcile(
    ctx: Arc<Context>,
    opts: &RunOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let Some(lease) = &opts.lease else {
        // Without leader election every replica leads.
        ctx.metrics.leader.set(1);
        let r = lead(ctx.clone(), opts, shutdown.clone()).await;
        ctx.metrics.leader.set(0);
        return r;
    };
    let manager = kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_secs)
        .with_grace(lease.grace_secs)
        // One field manager per replica: a server-side apply of the holder
        // by another manager conflicts, which is what keeps two replicas
        // from taking an expired or released Lease at once (with one
        // shared manager both succeeded, and both led).
        .with_field_manager(format!("insights-remote-lease-{}", lease.identity))
        .build()
        .await
        .map_err(|e| Error::Invalid(format!("leader election: {e}")))?;
    let (mut leader, lease_task) = manager.watch().await;
    let mut failed = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = leader.wait_for(|l| *l) => if r.is_err() { break },
        }
        info!(identity = %lease.identity, "became the leader: reconciling");
        match term(&ctx, opts, &mut leader, &shutdown).await {
            Ok(true) => warn!(identity = %lease.identity, "lost the Lease: stopped reconciling"),
            Ok(false) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Dropping the receiver releases the Lease for the next replica (also
    // when a term failed: the next replica need not wait it out).
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("Lease released"),
        other => warn!(?other, "could not release the Lease"),
    }
    failed.map_or(Ok(()), Err)
}

/// Leads one term, until the Lease is lost (true), the process stops
/// (false) or the term fails.
async fn term(
    ctx: &Arc<Context>,
    opts: &RunOptions,
    leader: &mut tokio::sync::watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    ctx.metrics.leader.set(1);
    // The term's own token: cancelled with the process's, or when the
    // Lease is lost.
    let term_stop = shutdown.child_token();
    let mut term = tokio::spawn({
        let (ctx, opts, term_stop) = (ctx.clone(), opts.clone(), term_stop.clone());
        async move { lead(ctx, &opts, term_stop).await }
    });
    let stepped_down = tokio::select! {
        _ = shutdown.cancelled() => Ok(false),
        _ = leader.wait_for(|l| !*l) => Ok(true),
        ended = &mut term => Err(match ended {
            Ok(Err(e)) => e,
            Ok(Ok(())) => Error::Invalid("the leadership term ended".into()),
            Err(e) => Error::Invalid(format!("the leadership term failed: {e}")),
        }),
    };
    term_stop.cancel();
    if !term.is_finished() {
        let _ = term.await;
    }
    ctx.metrics.leader.set(0);
    stepped_down
}

/// One leadership term: the reconcilers and the status writer. Any of them
/// ending before `stop` is a failure: the term ends with it (and, through
/// [`run`], the process), instead of leading without reconciling.
async fn lead(ctx: Arc<Context>, opts: &RunOptions, outer: CancellationToken) -> Result<()> {
    // The term's own stop: the caller's, or the first task to fail.
    let stop = outer.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |name: &'static str, f: futures::future::BoxFuture<'static, ()>| {
        tasks.spawn(async move {
            f.await;
            name
        });
    };
    use futures::FutureExt;
    spawn(
        "status writer",
        config::write_status(ctx.clone(), stop.clone()).boxed(),
    );
    if opts.forward {
        spawn(
            "ConfigMap reconciler",
            configmap::run(ctx.clone(), opts.concurrency, stop.clone()).boxed(),
        );
    }
    if opts.tokens {
        spawn(
            "token reconciler",
            namespace::run(ctx.clone(), stop.clone()).boxed(),
        );
    }
    // Idle until the scanner is enabled (flag, environment or resource).
    spawn(
        "build scanner",
        build::run(ctx.clone(), stop.clone()).boxed(),
    );
    let mut failed = None;
    while let Some(ended) = tasks.join_next().await {
        if stop.is_cancelled() {
            continue;
        }
        failed = Some(Error::Invalid(match ended {
            Ok(name) => format!("the {name} stopped unexpectedly"),
            Err(e) => format!("a reconciler failed: {e}"),
        }));
        // Stop the others as at shutdown, so in-flight reconciles finish
        // (a ConfigMap confirmed is also marked); bounded, then aborted.
        stop.cancel();
        let rest = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), rest)
            .await
            .is_err()
        {
            warn!("some reconcilers did not stop within 20 s; aborting them");
        }
        break;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Fills the cluster's stores until shutdown, on every replica (the
/// ingestion API of each one checks tokens against them), and keeps the
/// tenants registry's minting flag: a missing Secret means revoked only
/// when this process mints tokens (`reconciler`), by flag and by the
/// resource.
async fn watch_cluster(ctx: Arc<Context>, reconciler: bool, shutdown: CancellationToken) {
    let minting = {
        let (tenants, mut ops) = (ctx.tenants.clone(), ctx.ops.subscribe());
        async move {
            loop {
                tenants.set_minting(reconciler && ops.borrow_and_update().tokens_enabled);
                if ops.changed().await.is_err() {
                    break;
                }
            }
        }
    };
    let observer = Observer(ctx.clone());
    let watches = ctx.cluster.run(
        ctx.client.clone(),
        ctx.watch_namespace.as_deref(),
        observer,
        shutdown.cancelled(),
    );
    tokio::select! {
        _ = watches => {}
        _ = minting => {}
    }
}

/// Hands the cluster watches' events to the tenants registry and the token
/// reconciler, and counts and reports their errors.
struct Observer(Arc<Context>);

impl crate::cluster::Observer for Observer {
    fn namespace(&mut self, ev: &kube::runtime::watcher::Event<crate::cluster::NamespaceMeta>) {
        self.0.tenants.observe(ev);
        // A changed namespace (its labels may name another environment now)
        // goes to the token reconciler; a new full list makes it look at
        // every one (crate::cluster::Cluster::namespace_lists).
        if let kube::runtime::watcher::Event::Apply(ns) = ev {
            self.0
                .token_secrets
                .recheck(&kube::ResourceExt::name_any(ns));
        }
    }

    fn token_secret(&mut self, ev: &kube::runtime::watcher::Event<crate::cluster::TokenSecret>) {
        self.0.token_secrets.observe(&self.0.cluster, ev);
    }

    fn error(&mut self, name: &'static str, e: &kube::runtime::watcher::Error) {
        use kube::runtime::watcher::Error as E;
        self.0.metrics.count_watch_error(name);
        let fallback = match name {
            "token-secrets" => "tokens are checked against the last list; the token reconciler looks with a GET",
            _ => "tokens are checked against the last list; ConfigMaps' namespaces are read with a GET",
        };
        match e {
            E::InitialListFailed(k) | E::WatchStartFailed(k) | E::WatchFailed(k) => {
                self.0
                    .report(name, k, &format!("watching {name} ({fallback})"))
            }
            other => warn!(error = %other, "watching {name} ({fallback})"),
        }
    }
}
