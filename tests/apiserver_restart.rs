//! The API server restarted while ConfigMaps keep coming: watches resume and
//! every ConfigMap ends processed and in the queue. Runs alone in its own
//! test binary because it restarts the shared API server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::cluster::*;
use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PostParams};
use kube::Api;

const TOTAL: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configmap_ends_processed_across_an_api_server_restart() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "restart").await;
    let broker = isolated_broker("restart");
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker.clone(), test_ops(), &unique("irc")),
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let creator = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                // Keep trying while the API server is away.
                while api
                    .create(&PostParams::default(), &numbered_insights_cm(i))
                    .await
                    .is_err()
                {
                    if api
                        .get_opt(&format!("cm-{i}"))
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_apiserver(3);
    creator.await.unwrap();

    wait_for(
        "every ConfigMap processed",
        Duration::from_secs(120),
        || async {
            let n = api
                .list_metadata(&ListParams::default().labels("lagoon.sh/insightsProcessed"))
                .await
                .ok()?
                .items
                .len();
            (n == TOTAL).then_some(())
        },
    )
    .await;
    let msgs = drain_all(&broker.queue).await;
    let ids: HashSet<&str> = msgs
        .iter()
        .map(|m| m["labels"]["test-id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), TOTAL, "every ConfigMap is in the queue");
    println!(
        "{} messages for {TOTAL} ConfigMaps across the restart",
        msgs.len()
    );
    op.stop().await;
    delete_queue(&broker.queue).await;
    ns.cleanup().await;
}
