//! The token Secret cache when its watch breaks for good: list and watch are
//! revoked, then the API server restarts, so the watch's new list is
//! refused while single GETs still work. The cache must stop vouching for
//! the Secrets it knew, and a Secret deleted meanwhile must come back at the
//! next periodic check. Runs alone in its own test binary because it
//! restarts the shared API server.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::controller::token_secrets::Known;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn role(name: &str, token_verbs: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["insights-token"], "verbs": token_verbs},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["insights.lagoon.sh"], "resources": ["insightsremoteconfigs"], "verbs": ["get", "list", "watch"]},
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_deleted_while_the_watch_is_refused_comes_back() {
    let admin = client().await;
    ensure_crd(&admin).await;
    let ns = TestNamespace::new(&admin, "tokout").await;
    let role_name = unique("tokout");
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let apply = PatchParams::apply("tests").force();
    let all_verbs = ["get", "list", "watch", "create", "patch"];
    roles
        .patch(
            &role_name,
            &apply,
            &Patch::Apply(role(&role_name, &all_verbs)),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            &role_name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": "tokout", "namespace": ns.name}],
            })),
        )
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "tokout"}})).unwrap(),
        )
        .await
        .unwrap();
    let sa = service_account_client(&admin, &ns.name, "tokout").await;

    let op = Operator::start_with(
        &sa,
        OperatorOptions::tokens(&ns.name, "tokout", &unique("irc-tokout")),
        |s| s.token_resync = Duration::from_secs(2),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let claims = common::claims(&ns.name, "42");
    let key = ring().fingerprint();
    let known = || {
        op.ctx
            .token_secrets
            .known(&op.ctx.cluster, &ns.name, &key, &claims)
    };
    // Minted, and then vouched for by the watch without any GET.
    wait_for(
        "the cache vouches for the token",
        Duration::from_secs(30),
        || async { (known() == Known::Good).then_some(()) },
    )
    .await;
    let first = secrets.get("insights-token").await.unwrap();

    // List and watch revoked (GET, create and patch kept); the API server
    // restarts, so the watch must list again, and is refused.
    roles
        .patch(
            &role_name,
            &apply,
            &Patch::Apply(role(&role_name, &["get", "create", "patch"])),
        )
        .await
        .unwrap();
    restart_apiserver(2);
    wait_for(
        "the cache stops vouching",
        Duration::from_secs(60),
        || async { (known() == Known::Unknown).then_some(()) },
    )
    .await;

    // Deleted by hand while the watch is refused: back at the next
    // periodic check, through a GET.
    secrets
        .delete("insights-token", &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_for(
        "the token Secret is back",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("insights-token")
                .await
                .ok()
                .flatten()
                .filter(|s| s.uid() != first.uid())
        },
    )
    .await;
    assert!(ring()
        .verify(&String::from_utf8(again.data.unwrap()["INSIGHTS_TOKEN"].0.clone()).unwrap())
        .is_ok());
    op.stop().await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&role_name, &DeleteParams::default())
        .await;
    ns.cleanup().await;
}
