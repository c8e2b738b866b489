//! The post-build image scanner (upstream v0.0.16+, `--enable-build-scanner`):
//! when a Lagoon build pod succeeds, a scanner pod is started for the images
//! of the namespace's Deployments; it writes the SBOM ConfigMaps that the
//! forwarding pipeline then carries.
//!
//! [`scanner_pod`] and [`plan`] decide (pure, table-tested); [`reconcile`]
//! acts. Idempotent across restarts and leader changes: the scanner pod's
//! name derives from the build pod's, an existing one of that name is kept,
//! and the build pod is labelled `insights.lagoon.sh/scanned` last.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, KeyToPath, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, Error, Result};
pub use crate::settings::{ScannerSettings, DEFAULT_SCANNER_IMAGE};

pub const CONTROLLER: &str = "build";
pub const LABEL_BUILD_NAME: &str = "lagoon.sh/buildName";
pub const LABEL_SCANNED: &str = "insights.lagoon.sh/scanned";
pub const LABEL_SCAN_STATUS: &str = "insights.lagoon.sh/scan-status";
pub const LABEL_IMAGE_SCANNER: &str = "insights.lagoon.sh/imagescanner";
pub const ANNOTATION_DOCKER_HOST: &str = "dockerhost.lagoon.sh/name";
pub const DEFAULT_DOCKER_HOST: &str = "docker-host.lagoon.svc";
pub const SCANNER_SERVICE_ACCOUNT: &str = "lagoon-deployer";
pub const REGISTRY_SECRET: &str = "lagoon-internal-registry-secret";
/// The scanner's resources: syft reads whole images, so the memory limit is
/// generous; the requests let the scheduler place it next to the build.
pub const SCANNER_CPU_REQUEST: &str = "100m";
pub const SCANNER_MEMORY_REQUEST: &str = "256Mi";
pub const SCANNER_MEMORY_LIMIT: &str = "2Gi";

/// Build pods not yet scanned (scanner pods carry scan-status and are left out).
pub fn selector() -> String {
    format!("{LABEL_BUILD_NAME},!{LABEL_SCANNED},!{LABEL_SCAN_STATUS}")
}

/// Upstream's list of build-pod variables the scanner gets (exact names,
/// any case) plus every `LAGOON_FEATURE_FLAG_<something>`.
fn copied(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "BRANCH",
        "BUILD_TYPE",
        "ENVIRONMENT",
        "ENVIRONMENT_TYPE",
        "PROJECT",
        "PR_BASE_BRANCH",
        "PR_HEAD_BRANCH",
        "PR_NUMBER",
        "LAGOON_ENVIRONMENT_VARIABLES",
    ];
    let upper = name.to_ascii_uppercase();
    NAMES.contains(&upper.as_str())
        || upper
            .strip_prefix("LAGOON_FEATURE_FLAG_")
            .is_some_and(|rest| !rest.is_empty())
}

/// Container images of the Deployments, in order, each once.
pub fn images(deployments: &[Deployment]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in deployments {
        let containers = d
            .spec
            .template
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        for c in containers {
            if let Some(i) = c.image.as_ref().filter(|i| !i.is_empty()) {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
        }
    }
    out
}

/// The scanner pod's name: upstream's, cut to the 253 characters a name may have.
pub fn scanner_name(build_pod: &str) -> String {
    let mut n = format!("insights-scanner-{build_pod}");
    n.truncate(253);
    n.trim_end_matches(['-', '.']).to_string()
}

/// The scanner pod for a succeeded build pod and the images to scan.
pub fn scanner_pod(build: &Pod, images: &[String], s: &ScannerSettings) -> Pod {
    let docker_host = build
        .annotations()
        .get(ANNOTATION_DOCKER_HOST)
        .filter(|h| !h.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.into());
    let mut env: BTreeMap<String, EnvVar> = BTreeMap::new();
    let mut plain = |name: &str, value: String| {
        env.insert(
            name.to_string(),
            EnvVar {
                name: name.to_string(),
                value: Some(value),
                value_from: None,
            },
        );
    };
    plain("INSIGHT_SCAN_IMAGES", images.join(","));
    plain("NAMESPACE", build.namespace().unwrap_or_default());
    plain("DOCKER_HOST", docker_host);
    let build_env = build
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref());
    for e in build_env.into_iter().flatten() {
        if copied(&e.name) {
            env.insert(e.name.clone(), e.clone());
        }
    }
    for (k, v) in &s.extra_env {
        env.insert(
            k.clone(),
            EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                value_from: None,
            },
        );
    }
    let volume = "lagoon-internal-registry-secret";
    Pod {
        metadata: ObjectMeta {
            name: Some(scanner_name(&build.name_any())),
            namespace: build.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_SCAN_STATUS.to_string(), "scanning".to_string()),
                (LABEL_IMAGE_SCANNER.to_string(), "true".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(SCANNER_SERVICE_ACCOUNT.into()),
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "scanner".into(),
                image: Some(s.image.clone()),
                image_pull_policy: Some(s.pull_policy.clone()),
                // Sorted by name: the spec is the same however it was built.
                env: Some(env.into_values().collect()),
                volume_mounts: Some(vec![VolumeMount {
                    name: volume.into(),
                    mount_path: "/home/.docker/".into(),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                // No privilege escalation, no capabilities, the runtime's
                // seccomp profile (the pod's), bounded resources.
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    run_as_non_root: s.run_as_user.map(|_| true),
                    run_as_user: s.run_as_user,
                    run_as_group: s.run_as_user,
                    ..Default::default()
                }),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity(SCANNER_CPU_REQUEST.into())),
                        (
                            "memory".to_string(),
                            Quantity(SCANNER_MEMORY_REQUEST.into()),
                        ),
                    ])),
                    limits: Some(BTreeMap::from([(
                        "memory".to_string(),
                        Quantity(SCANNER_MEMORY_LIMIT.into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            volumes: Some(vec![Volume {
                name: volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(REGISTRY_SECRET.into()),
                    items: Some(vec![KeyToPath {
                        key: ".dockerconfigjson".into(),
                        path: "config.json".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// What to do about one build pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Not succeeded (yet): nothing.
    Wait,
    /// Succeeded, but no Deployment has an image: say so, look again later.
    NoImages,
    /// Remove these earlier scanner pods, create this one (kept if it exists
    /// already), then mark the build pod scanned.
    Scan { remove: Vec<String>, pod: Box<Pod> },
}

/// Builds that finished longer ago than this are not scanned: switching the
/// scanner on does not start a scan for every old build pod in the cluster
/// (upstream reacts only to build pods that change).
pub const MAX_BUILD_AGE: Duration = Duration::from_secs(3600);

/// When the build pod's containers finished (the latest), if known.
fn finished_at(build: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    build
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

/// `lagoon_namespace`: whether the build pod's namespace is a Lagoon
/// environment; a pod labelled `lagoon.sh/buildName` anywhere else starts
/// no scanner (anyone may label a pod so).
pub fn plan(
    build: &Pod,
    lagoon_namespace: bool,
    deployments: &[Deployment],
    scanners: &[String],
    s: &ScannerSettings,
    now: k8s_openapi::jiff::Timestamp,
) -> Plan {
    let phase = build.status.as_ref().and_then(|st| st.phase.as_deref());
    if phase != Some("Succeeded") || !lagoon_namespace {
        return Plan::Wait;
    }
    if finished_at(build).is_some_and(|t| {
        now.duration_since(t)
            > k8s_openapi::jiff::SignedDuration::try_from(MAX_BUILD_AGE).unwrap_or_default()
    }) {
        return Plan::Wait;
    }
    let images = images(deployments);
    if images.is_empty() {
        return Plan::NoImages;
    }
    let pod = scanner_pod(build, &images, s);
    let name = pod.name_any();
    Plan::Scan {
        remove: scanners.iter().filter(|n| **n != name).cloned().collect(),
        pod: Box::new(pod),
    }
}

/// Runs while the scanner is enabled; follows the setting live.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let api: Api<Pod> = match &ctx.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    loop {
        let mut ops = ctx.ops.subscribe();
        tokio::select! {
            _ = shutdown.clone().cancelled_owned() => return,
            r = ops.wait_for(|o| o.build_scanner.enabled) => if r.is_err() { return },
        }
        info!(selector = %selector(), "build scanner enabled: watching build pods");
        let switched = ctx.until_settings(&shutdown, |o| !o.build_scanner.enabled);
        Controller::new(api.clone(), watcher::Config::default().labels(&selector()))
            .graceful_shutdown_on(switched)
            .run(reconcile_observed, error_policy, ctx.clone())
            .for_each(|_| async {})
            .await;
        if shutdown.is_cancelled() {
            return;
        }
        info!("build scanner disabled");
    }
}

async fn reconcile_observed(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    let measure = ctx.measure(CONTROLLER);
    measure.outcome(reconcile(pod, ctx.clone()).await)
}

fn error_policy(pod: Arc<Pod>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = pod.namespace().unwrap_or_default(), name = %pod.name_any(), error = %err, "build scan failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

/// Carries out [`plan`]'s decision for one build pod.
pub async fn reconcile(build: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    let settings = ctx.ops.borrow().build_scanner.clone();
    if !settings.enabled
        || build.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded")
    {
        return Ok(Action::await_change());
    }
    let plan = match look(&build, &ctx, &settings).await {
        Ok(p) => p,
        Err(e) => return Err(failed(&ctx, &build, e).await),
    };
    match plan {
        Plan::Wait => Ok(Action::await_change()),
        Plan::NoImages => {
            ctx.metrics.count_scan("no_images");
            ctx.event(
                &*build,
                EventType::Warning,
                "NothingToScan",
                "Scan",
                "no Deployment in this namespace has a container image; looking again in 60s"
                    .into(),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        Plan::Scan { remove, pod } => match start_scan(&ctx, &build, &remove, &pod).await {
            Ok(name) => {
                ctx.metrics.count_scan("started");
                ctx.event(
                    &*build,
                    EventType::Normal,
                    "ScanStarted",
                    "Scan",
                    format!("scanner pod {name} started"),
                )
                .await;
                Ok(Action::await_change())
            }
            Err(e) => Err(failed(&ctx, &build, e).await),
        },
    }
}

/// Reads what [`plan`] needs: whether the namespace is a Lagoon
/// environment, its Deployments and the scanner pods already running (two
/// LISTs per successful build; a store would hold every Deployment of the
/// cluster for an event that comes once per build).
async fn look(build: &Pod, ctx: &Context, settings: &ScannerSettings) -> Result<Plan> {
    let ns = build.namespace().unwrap_or_default();
    let lagoon = crate::cluster::is_lagoon_environment(
        &ctx.cluster.identity_labels(&ctx.client, &ns).await?,
    );
    if !lagoon {
        return Ok(Plan::Wait);
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let deps = deployments.list(&ListParams::default()).await?.items;
    let scanners: Vec<String> = pods
        .list_metadata(&ListParams::default().labels(&format!(
            "{LABEL_SCAN_STATUS}=scanning,{LABEL_IMAGE_SCANNER}=true"
        )))
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    Ok(plan(
        build,
        lagoon,
        &deps,
        &scanners,
        settings,
        k8s_openapi::jiff::Timestamp::now(),
    ))
}

/// Removes earlier scanner pods, creates this one and marks the build
/// scanned; the new pod's name.
async fn start_scan(ctx: &Context, build: &Pod, remove: &[String], pod: &Pod) -> Result<String> {
    let ns = build.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for old in remove {
        match pods.delete(old, &DeleteParams::default()).await {
            Ok(_) => info!(namespace = %ns, pod = %old, "removed an earlier scanner pod"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(Error::from(e)),
        }
    }
    let name = pod.name_any();
    match pods.create(&PostParams::default(), pod).await {
        Ok(_) => {
            info!(namespace = %ns, pod = %name, build = %build.name_any(), "scanner pod created")
        }
        // Created before a restart or by the previous leader: keep it.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => return Err(Error::from(e)),
    }
    pods.patch(
        &build.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {LABEL_SCANNED: "true"}}})),
    )
    .await?;
    Ok(name)
}

/// A failed scan: counted and said on the build pod; the error for the retry.
async fn failed(ctx: &Context, build: &Pod, e: Error) -> Error {
    ctx.metrics.count_scan("failed");
    ctx.event(
        build,
        EventType::Warning,
        "ScanFailed",
        "Scan",
        e.to_string(),
    )
    .await;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{EnvVarSource, PodStatus, PodTemplateSpec, SecretKeySelector};

    fn deployment(images: &[&str]) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: images
                            .iter()
                            .map(|i| Container {
                                name: "c".into(),
                                image: Some(i.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                        init_containers: Some(vec![Container {
                            name: "init".into(),
                            image: Some("init-image".into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn build_pod(phase: &str, annotations: &[(&str, &str)]) -> Pod {
        let from_secret = EnvVar {
            name: "LAGOON_FEATURE_FLAG_SECRET".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "lagoon-env".into(),
                    key: "X".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("lagoon-build-abc".into()),
                namespace: Some("demo-main".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "lagoon-build".into(),
                    env: Some(vec![
                        env("PROJECT", "demo"),
                        env("branch", "main"),
                        env("ENVIRONMENT_ID", "42"),
                        env("LAGOON_FEATURE_FLAG_", "bare"),
                        env("LAGOON_FEATURE_FLAG_X", "1"),
                        env("SSH_PRIVATE_KEY", "never copied"),
                        env("BUILD_TYPE", "branch"),
                        from_secret,
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn settings(extra: &[(&str, &str)]) -> ScannerSettings {
        ScannerSettings {
            enabled: true,
            image: "scanner:1".into(),
            extra_env: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_as_user: None,
            pull_policy: "Always".into(),
        }
    }

    #[test]
    fn the_scanner_runs_without_privileges_and_bounded() {
        let build = Pod::default();
        let pod = scanner_pod(&build, &["img".into()], &settings(&[]));
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.run_as_non_root, None, "the image's user unless told");
        assert_eq!(
            spec.security_context
                .unwrap()
                .seccomp_profile
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, SCANNER_MEMORY_LIMIT);
        assert_eq!(
            r.requests.as_ref().unwrap()["memory"].0,
            SCANNER_MEMORY_REQUEST
        );
        let mut s = settings(&[]);
        s.run_as_user = Some(10001);
        let pod = scanner_pod(&build, &["img".into()], &s);
        let sc = pod.spec.unwrap().containers[0]
            .security_context
            .clone()
            .unwrap();
        assert_eq!(
            (sc.run_as_non_root, sc.run_as_user),
            (Some(true), Some(10001))
        );
    }

    #[test]
    fn plan_table() {
        let deps = [
            deployment(&["nginx:1", "php:8"]),
            deployment(&["nginx:1", "cli:2"]),
        ];
        let s = settings(&[]);
        let scanners = [
            "insights-scanner-old".to_string(),
            "insights-scanner-lagoon-build-abc".to_string(),
        ];
        let now = k8s_openapi::jiff::Timestamp::now();
        let plan = |b: &Pod, d: &[Deployment], sc: &[String], s: &ScannerSettings| {
            plan(b, true, d, sc, s, now)
        };
        // Not a Lagoon environment's namespace: no scanner, whatever the pod says.
        assert_eq!(
            super::plan(
                &build_pod("Succeeded", &[]),
                false,
                &deps,
                &scanners,
                &s,
                now
            ),
            Plan::Wait
        );
        // Finished two hours ago: not scanned when the scanner is switched on.
        let finished = |ago: k8s_openapi::jiff::SignedDuration| {
            let mut b = build_pod("Succeeded", &[]);
            b.status.as_mut().unwrap().container_statuses =
                Some(vec![serde_json::from_value(serde_json::json!({
                    "name": "lagoon-build", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "finishedAt": (now - ago).to_string()}},
                }))
                .unwrap()]);
            b
        };
        assert_eq!(
            plan(
                &finished(k8s_openapi::jiff::SignedDuration::from_hours(2)),
                &deps,
                &scanners,
                &s
            ),
            Plan::Wait
        );
        assert!(matches!(
            plan(
                &finished(k8s_openapi::jiff::SignedDuration::from_mins(5)),
                &deps,
                &scanners,
                &s
            ),
            Plan::Scan { .. }
        ));
        assert_eq!(
            plan(&build_pod("Running", &[]), &deps, &scanners, &s),
            Plan::Wait
        );
        assert_eq!(
            plan(&build_pod("Failed", &[]), &deps, &scanners, &s),
            Plan::Wait
        );
        assert_eq!(
            plan(&build_pod("Succeeded", &[]), &[], &scanners, &s),
            Plan::NoImages
        );
        match plan(&build_pod("Succeeded", &[]), &deps, &scanners, &s) {
            Plan::Scan { remove, pod } => {
                assert_eq!(
                    remove,
                    ["insights-scanner-old"],
                    "earlier scanners go, ours stays"
                );
                assert_eq!(pod.name_any(), "insights-scanner-lagoon-build-abc");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scanner_pod_as_upstream_builds_it() {
        let images = images(&[deployment(&["nginx:1", "php:8"]), deployment(&["nginx:1"])]);
        assert_eq!(images, ["nginx:1", "php:8"], "containers only, each once");
        let pod = scanner_pod(
            &build_pod(
                "Succeeded",
                &[(ANNOTATION_DOCKER_HOST, "docker-host-2.lagoon.svc")],
            ),
            &images,
            &settings(&[
                ("PROJECT", "overridden"),
                ("HTTP_PROXY", "http://proxy:3128"),
            ]),
        );
        assert_eq!(pod.namespace().as_deref(), Some("demo-main"));
        assert_eq!(pod.labels()[LABEL_SCAN_STATUS], "scanning");
        assert_eq!(pod.labels()[LABEL_IMAGE_SCANNER], "true");
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("lagoon-deployer")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let vol = &spec.volumes.unwrap()[0];
        let secret = vol.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some(REGISTRY_SECRET));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, ".dockerconfigjson");
        assert_eq!(secret.items.as_ref().unwrap()[0].path, "config.json");
        let c = &spec.containers[0];
        assert_eq!(
            (c.name.as_str(), c.image.as_deref()),
            ("scanner", Some("scanner:1"))
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str(), m.read_only),
            (vol.name.as_str(), "/home/.docker/", Some(true))
        );
        let env = c.env.as_ref().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "BUILD_TYPE",
                "DOCKER_HOST",
                "HTTP_PROXY",
                "INSIGHT_SCAN_IMAGES",
                "LAGOON_FEATURE_FLAG_SECRET",
                "LAGOON_FEATURE_FLAG_X",
                "NAMESPACE",
                "PROJECT",
                "branch",
            ],
            "sorted; ENVIRONMENT_ID, a bare LAGOON_FEATURE_FLAG_ and other variables are not copied"
        );
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap();
        assert_eq!(
            get("INSIGHT_SCAN_IMAGES").value.as_deref(),
            Some("nginx:1,php:8")
        );
        assert_eq!(
            get("DOCKER_HOST").value.as_deref(),
            Some("docker-host-2.lagoon.svc")
        );
        assert_eq!(get("NAMESPACE").value.as_deref(), Some("demo-main"));
        assert_eq!(
            get("PROJECT").value.as_deref(),
            Some("overridden"),
            "extras win"
        );
        assert!(
            get("LAGOON_FEATURE_FLAG_SECRET").value_from.is_some(),
            "valueFrom kept"
        );
        // Without the annotation: upstream's default docker host.
        let plain = scanner_pod(&build_pod("Succeeded", &[]), &images, &settings(&[]));
        let env = plain.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(
            env.iter()
                .find(|e| e.name == "DOCKER_HOST")
                .unwrap()
                .value
                .as_deref(),
            Some(DEFAULT_DOCKER_HOST)
        );
    }

    #[test]
    fn long_names_are_cut_to_a_valid_length() {
        let n = scanner_name(&"b".repeat(300));
        assert_eq!(n.len(), 253);
        assert!(n.starts_with("insights-scanner-b"));
    }
}
