//! The local control plane (hack/control-plane.sh) is a real API server:
//! namespaces, CRDs, label-selected watches and namespace termination work.

mod common;

use std::time::Duration;

use common::cluster::*;
use futures::StreamExt;
use insights_remote::crd::InsightsRemoteConfig;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test]
async fn real_api_server_supports_what_the_operator_needs() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cp").await;
    let got = Api::<Namespace>::all(client.clone())
        .get(&ns.name)
        .await
        .unwrap();
    assert_eq!(got.labels()["lagoon.sh/environmentId"], "42");

    ensure_crd(&client).await;
    let name = common::unique("irc-cp");
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    irc.patch(
        &name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(json!({"apiVersion": "insights.lagoon.sh/v1alpha1", "kind": "InsightsRemoteConfig", "metadata": {"name": name}, "spec": {"burnAfterReading": true}})),
    )
    .await
    .unwrap();
    let stored = irc.get(&name).await.unwrap();
    assert_eq!(stored.spec.burn_after_reading, Some(true));
    assert_eq!(
        stored.spec.forwarding.max_retries, None,
        "no defaults stored: unset fields keep the flags' values"
    );

    // A label-selected watch sees a matching create and not the others.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let mut events = watcher::watcher(
        cms.clone(),
        watcher::Config::default().labels("lagoon.sh/insightsType"),
    )
    .boxed();
    // The creates come once the watch has its initial list (InitDone), so
    // the matching one arrives as a watch event (Apply).
    tokio::time::timeout(Duration::from_secs(20), async {
        while !matches!(events.next().await, Some(Ok(watcher::Event::InitDone))) {}
    })
    .await
    .expect("the watch lists");
    let mut seen = Vec::new();
    let create = async {
        for (n, labelled) in [("unrelated", false), ("insights", true)] {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(n.into());
            if labelled {
                cm.metadata.labels =
                    Some([("lagoon.sh/insightsType".to_string(), "sbom-gz".to_string())].into());
            }
            cms.create(&PostParams::default(), &cm).await.unwrap();
        }
    };
    let collect = async {
        while let Some(ev) = events.next().await {
            if let Ok(watcher::Event::Apply(cm)) = ev {
                seen.push(cm.name_any());
                break;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(create, collect),
    )
    .await
    .expect("watch event");
    assert_eq!(seen, ["insights"]);

    // Deleting the namespace goes through Terminating, then it is gone.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    let phase = namespaces
        .get(&ns.name)
        .await
        .unwrap()
        .status
        .unwrap()
        .phase;
    assert_eq!(phase.as_deref(), Some("Terminating"));
    wait_for("namespace gone", Duration::from_secs(60), || async {
        namespaces
            .get_opt(&ns.name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    irc.delete(&name, &DeleteParams::default()).await.unwrap();
}
