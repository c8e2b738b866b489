//! Token Secrets end to end against the real API server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::crd::InsightsRemoteConfig;
use insights_remote::token::KeyRing;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn token_of(s: &Secret) -> String {
    String::from_utf8(s.data.as_ref().unwrap()["INSIGHTS_TOKEN"].0.clone()).unwrap()
}

async fn start(client: &kube::Client, ns: &str, config_name: &str) -> Operator {
    Operator::start(client, OperatorOptions::tokens(ns, "tok", config_name)).await
}

/// Writes `token` into the Secret, as a hand edit would.
async fn overwrite_token(secrets: &Api<Secret>, token: &str) {
    secrets
        .patch(
            "insights-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"INSIGHTS_TOKEN": base64_of(token)}})),
        )
        .await
        .unwrap();
}

async fn wait_secret(api: &Api<Secret>, what: &str, ok: impl Fn(&Secret) -> bool) -> Secret {
    wait_for(what, Duration::from_secs(30), || async {
        api.get_opt("insights-token")
            .await
            .unwrap()
            .filter(|s| ok(s))
    })
    .await
}

/// The token Secrets are watched (by name, metadata only): one deleted or
/// edited by hand is put right at once, not at the next periodic re-check
/// (an hour here, so waiting for it would time out).
#[tokio::test]
async fn token_secret_changed_by_hand_is_put_right_at_once() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "tokw").await;
    let op = Operator::start_with(
        &client,
        OperatorOptions::tokens(&ns.name, "tokw", &unique("irc-tokw")),
        |s| s.token_resync = Duration::from_secs(3600),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let first = wait_secret(&secrets, "token Secret", |_| true).await;
    secrets
        .delete("insights-token", &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_secret(&secrets, "re-minted after a delete", |s| {
        s.uid() != first.uid()
    })
    .await;
    overwrite_token(&secrets, "forged.token.value").await;
    let repaired = wait_secret(&secrets, "repaired after an edit", |s| {
        ring().verify(&token_of(s)).is_ok()
    })
    .await;
    assert_eq!(repaired.uid(), again.uid(), "updated in place");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn token_secret_is_minted_repaired_and_rotated_in_place() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "tok").await;
    let config_name = unique("irc-tok");
    let op = start(&client, &ns.name, &config_name).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // The ingestion API of the same process, following the same key ring.
    let api_url = ingestion_api(&op).await;
    let post = |token: String| {
        let url = api_url.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/facts"))
                .header("authorization", token)
                .body(r#"[{"name":"n","value":"v"}]"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // Minted with the contract's labels and claims.
    let s = wait_secret(&secrets, "token Secret", |_| true).await;
    assert_eq!(s.labels()["lagoon.sh/insights-token"], "true");
    assert_eq!(s.labels()["lagoon.sh/dynamic-secret"], "insights-token");
    let t = token_of(&s);
    assert!(!t.ends_with('\n'));
    let claims = ring().verify(&t).unwrap();
    assert_eq!(claims, common::claims(&ns.name, "42"));
    let uid = s.uid().unwrap();
    // Accepted once this replica's environment list has the Secret too.
    post_until(&api_url, &t, 200, "the minted token works against the API").await;

    // Tampered: re-minted in place (same object, never deleted).
    overwrite_token(&secrets, "forged.token.value").await;
    let repaired = wait_secret(&secrets, "repaired token", |s| {
        ring().verify(&token_of(s)).is_ok()
    })
    .await;
    assert_eq!(
        repaired.uid().unwrap(),
        uid,
        "updated in place, not deleted"
    );

    // A token naming another namespace is re-minted too.
    let foreign = ring()
        .mint(&common::claims("other-namespace", "42"))
        .unwrap();
    overwrite_token(&secrets, &foreign).await;
    wait_secret(&secrets, "token for this namespace", |s| {
        ring()
            .verify(&token_of(s))
            .map(|c| c.namespace == ns.name)
            .unwrap_or(false)
    })
    .await;

    // Key rotation through the InsightsRemoteConfig: the Secret is re-minted
    // with the new key, in place.
    let new_key = "rotated-signing-key-0123456789abcdef!";
    let key_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    key_secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("signing-key".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    ("key".to_string(), ByteString(new_key.as_bytes().to_vec())),
                    ("old".to_string(), ByteString(KEY.as_bytes().to_vec())),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    let spec = |prev: bool| {
        let mut sk = json!({"secretRef": {"name": "signing-key", "key": "key"}});
        if prev {
            sk["previousSecretRefs"] = json!([{"name": "signing-key", "key": "old"}]);
        }
        json!({"signingKey": sk})
    };
    apply_config(&client, &config_name, spec(true)).await;
    let new_ring = KeyRing::new(new_key).unwrap();
    let rotated = wait_secret(&secrets, "token signed with the new key", |s| {
        new_ring.verify(&token_of(s)).is_ok()
    })
    .await;
    assert_eq!(rotated.uid().unwrap(), uid, "rotation updates in place");
    // The API accepts old tokens while the previous key is listed...
    let keys = op.ctx.keys.borrow().clone();
    assert!(keys.verify(&t).is_ok(), "previous key still accepted");
    assert_eq!(
        post(t.clone()).await,
        200,
        "old token accepted while its key is listed as previous"
    );
    assert_eq!(
        post(token_of(&rotated)).await,
        200,
        "re-minted token accepted"
    );
    // ...and refuses them once it is dropped.
    apply_config(&client, &config_name, spec(false)).await;
    wait_for("previous key dropped", Duration::from_secs(30), || async {
        op.ctx.keys.borrow().verify(&t).is_err().then_some(())
    })
    .await;
    assert_eq!(
        post(t.clone()).await,
        401,
        "old token refused once its key is dropped"
    );
    assert_eq!(
        post(token_of(&rotated)).await,
        200,
        "current token still accepted"
    );
    // Replacing the previous key by another (same number of keys) takes
    // effect at once: tokens of the replaced key are refused.
    apply_config(&client, &config_name, spec(true)).await;
    wait_for(
        "previous key listed again",
        Duration::from_secs(30),
        || async { op.ctx.keys.borrow().verify(&t).is_ok().then_some(()) },
    )
    .await;
    let replacement = "replacement-previous-key-0123456789abcdef";
    key_secrets
        .patch(
            "signing-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"old": replacement}})),
        )
        .await
        .unwrap();
    wait_for(
        "replaced previous key refused",
        Duration::from_secs(30),
        || async { op.ctx.keys.borrow().verify(&t).is_err().then_some(()) },
    )
    .await;
    assert_eq!(post(t.clone()).await, 401, "replaced key's token refused");
    let by_replacement = KeyRing::new(replacement)
        .unwrap()
        .mint(&common::claims(&ns.name, "42"))
        .unwrap();
    assert_eq!(
        post(by_replacement).await,
        200,
        "new previous key's token accepted"
    );
    // The rotation is visible as an Event on the resource.
    let events: Api<Event> = Api::all(client.clone());
    let rotated_events = wait_for("KeyRotated event", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.unwrap().items;
        let n = list
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("KeyRotated")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some(config_name.as_str())
            })
            .count();
        (n > 0).then_some(n)
    })
    .await;
    assert!(rotated_events >= 1);

    op.stop().await;
    irc.delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
    ns.cleanup().await;
}

/// An ingestion server sharing the operator's key ring and publisher, as
/// `run.rs` wires them.
async fn ingestion_api(op: &Operator) -> String {
    use actix_web::web;
    use insights_remote::server::{self, ApiState};
    let state = web::Data::new(
        ApiState::new(
            op.ctx.keys.subscribe(),
            Some(op.publisher.clone()),
            op.metrics.clone(),
            Default::default(),
            0,
        )
        .with_tenants(op.ctx.tenants.clone()),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::ingestion_server(state, listener).unwrap());
    op.publisher.wait_connected(Duration::from_secs(10)).await;
    url
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Waits for an Event `reason` about namespace `name` (Events about
/// cluster-scoped objects live in the default namespace).
async fn namespace_event(client: &kube::Client, reason: &str, name: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(
        &format!("{reason} event"),
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
        },
    )
    .await
}

/// A namespace with `labels` gets a Warning Event `reason` (its note
/// containing `note`) and no token; setting `lagoon.sh/environmentId: 7`
/// gets it one.
async fn refused_until_relabelled(
    tag: &str,
    labels: BTreeMap<String, String>,
    reason: &str,
    note: &str,
) {
    let client = client().await;
    let ns = TestNamespace::with_labels(&client, tag, labels).await;
    let op = start(&client, &ns.name, &unique("irc")).await;
    let text = namespace_event(&client, reason, &ns.name)
        .await
        .note
        .unwrap();
    assert!(text.contains(note), "{text}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(secrets.get_opt("insights-token").await.unwrap().is_none());
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"lagoon.sh/environmentId": "7"}}})),
        )
        .await
        .unwrap();
    let s = wait_secret(&secrets, "token after labelling", |_| true).await;
    assert_eq!(ring().verify(&token_of(&s)).unwrap().environment_id, "7");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn namespace_missing_a_label_gets_an_event_and_no_token() {
    let mut labels = lagoon_labels("7");
    labels.remove("lagoon.sh/environmentId");
    refused_until_relabelled(
        "nolabel",
        labels,
        "MissingLabels",
        "lagoon.sh/environmentId",
    )
    .await;
}

/// A token for an id Lagoon cannot store would be refused on every request.
#[tokio::test]
async fn non_canonical_environment_id_gets_an_event_and_no_token() {
    refused_until_relabelled(
        "badid",
        lagoon_labels("007"),
        "InvalidEnvironmentId",
        "\"007\"",
    )
    .await;
}

#[tokio::test]
async fn target_label_limits_which_namespaces_get_tokens() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "target").await;
    let mut ops = test_ops();
    ops.target_label = Some("insights.lagoon.sh/enabled".into());
    let op = Operator::start(
        &client,
        OperatorOptions {
            ops,
            ..OperatorOptions::tokens(&ns.name, "tok", &unique("irc"))
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // The namespace was looked at (and skipped).
    wait_reconciliations(&op.metrics, "namespace", 1).await;
    assert!(
        secrets.get_opt("insights-token").await.unwrap().is_none(),
        "no target label, no token"
    );
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"insights.lagoon.sh/enabled": "true"}}})),
        )
        .await
        .unwrap();
    wait_secret(&secrets, "token once targeted", |_| true).await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn terminating_namespace_is_left_alone() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "term").await;
    let op = start(&client, &ns.name, &unique("irc")).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    wait_secret(&secrets, "token", |_| true).await;
    // A finalizer keeps the namespace Terminating while we look.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let mut blocker = ConfigMap::default();
    blocker.metadata.name = Some("blocker".into());
    blocker.metadata.finalizers = Some(vec!["tests.insights.lagoon.sh/hold".into()]);
    cms.create(&PostParams::default(), &blocker).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("namespace Terminating", Duration::from_secs(30), || async {
        let n = namespaces.get(&ns.name).await.ok()?;
        (n.status?.phase.as_deref() == Some("Terminating")).then_some(())
    })
    .await;
    // The namespace controller removes the Secret; we must not fight it.
    wait_for(
        "token Secret removed by namespace deletion",
        Duration::from_secs(30),
        || async {
            secrets
                .get_opt("insights-token")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    // Have the operator look at the namespace again, now without its
    // Secret, and wait until it has.
    let seen = reconciliations(&op.metrics, "namespace");
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"tests.insights.lagoon.sh/poke": "1"}}}),
            ),
        )
        .await
        .unwrap();
    wait_reconciliations(&op.metrics, "namespace", seen + 1).await;
    assert!(
        secrets.get_opt("insights-token").await.unwrap().is_none(),
        "no token written into a Terminating namespace"
    );
    let errors = op.metrics.render();
    assert!(
        !errors
            .lines()
            .any(|l| l.starts_with("insights_remote_reconcile_errors_total{")
                && l.contains("controller=\"namespace\"")
                && !l.ends_with(" 0")),
        "no failed writes: {errors}"
    );
    cms.patch(
        "blocker",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    op.stop().await;
}

/// The write for a namespace whose Secret the cache knows to be absent is a
/// plain create; when the Secret exists after all (the cache had not seen
/// it), the server-side apply takes it over in place instead of failing.
#[tokio::test]
async fn token_write_creates_and_takes_over_one_that_exists_after_all() {
    use insights_remote::controller::namespace::{token_secret, write_token, Write};
    let client = client().await;
    // No Lagoon labels: no operator of a parallel test mints here.
    let ns = TestNamespace::with_labels(&client, "tokw", BTreeMap::new()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    let refused = std::sync::atomic::AtomicBool::new(false);
    // The reconciler's write when the cache lists no Secret.
    let write = |token: &str| {
        let secret = token_secret(&ns.name, token.into(), None);
        let (secrets, refused) = (&secrets, &refused);
        async move { write_token(secrets, &secret, Write::Create, refused).await }
    };
    let created = write("t1").await.expect("created");
    assert_eq!(token_of(&created), "t1");
    let managers: Vec<_> = created
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["insights-remote"], "ours, by name");

    // The cache said absent, but a Secret is there (another token, another
    // label): the create meets 409 and the apply replaces our fields.
    let mut other = token_secret(&ns.name, "stale".into(), None);
    other
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("keep".into(), "me".into());
    secrets
        .delete("insights-token", &DeleteParams::default())
        .await
        .unwrap();
    // (A Secret has no finalizers: gone when the delete returns.)
    secrets
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let written = write("t2").await.expect("taken over, not refused");
    assert_eq!(token_of(&written), "t2");
    assert_eq!(written.labels()["keep"], "me", "an apply, not a replace");
    assert_eq!(
        written.uid(),
        secrets.get("insights-token").await.unwrap().uid()
    );
    ns.cleanup().await;
}

/// A token as the Go original mints it: the four claims, no `iat`.
fn go_token(ns: &str, env_id: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let c = common::claims(ns, env_id);
    let head = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64.encode(
        json!({"EnvironmentId": c.environment_id, "EnvironmentName": c.environment_name,
               "Namespace": c.namespace, "ProjectName": c.project_name})
        .to_string(),
    );
    let input = format!("{head}.{body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let sig = B64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    format!("{input}.{sig}")
}

/// An environment id no other test uses.
fn fresh_env_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (1_000_000 + nanos % 1_000_000_000 + std::process::id() % 1000).to_string()
}

/// Posts facts with `token` until the answer is `status` (the registry
/// follows the cluster through a watch); the body of that answer.
async fn post_until(url: &str, token: &str, status: u16, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = reqwest::Client::new()
            .post(format!("{url}/facts"))
            .header("authorization", token)
            .body(r#"[{"name":"n","value":"v"}]"#)
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let body = r.text().await.unwrap();
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: last answer {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 22, point 5: an admin revokes one environment's tokens (by
/// annotating its Secret, or deleting it) without rotating the cluster key;
/// the others keep working, a Go-minted token in a Secret never revoked
/// too; a deleted namespace's tokens are refused; a namespace claiming
/// another's environment id gets no token and its tokens are refused.
#[tokio::test]
async fn one_environment_s_tokens_are_revoked_without_touching_the_others() {
    let client = client().await;
    ensure_crd(&client).await;
    let target = unique("revoke-target");
    let labelled = |id: &str| {
        let mut l = lagoon_labels(id);
        l.insert(target.clone(), "yes".into());
        l
    };
    let id_a = fresh_env_id();
    let id_b = (id_a.parse::<u64>().unwrap() + 1).to_string();
    let a = TestNamespace::with_labels(&client, "reva", labelled(&id_a)).await;
    let b = TestNamespace::with_labels(&client, "revb", labelled(&id_b)).await;
    // B holds a token the Go original minted (no iat), as after a switch.
    let b_secrets: Api<Secret> = Api::namespaced(client.clone(), &b.name);
    let go = go_token(&b.name, &id_b);
    b_secrets
        .create(
            &PostParams::default(),
            &insights_remote::controller::namespace::token_secret(&b.name, go.clone(), None),
        )
        .await
        .unwrap();
    let mut options = OperatorOptions::tokens(&a.name, "revoke", &unique("irc-revoke"));
    options.ops.target_label = Some(target.clone());
    // Every namespace of the cluster is seen (as in production); only this
    // test's are targeted.
    let op = Operator::start_with(&client, options, |s| s.scope.watch_namespace = None).await;
    let url = ingestion_api(&op).await;
    let a_secrets: Api<Secret> = Api::namespaced(client.clone(), &a.name);
    let first = wait_secret(&a_secrets, "A's token", |_| true).await;
    let t1 = token_of(&first);
    post_until(&url, &t1, 200, "A's token accepted").await;
    post_until(&url, &go, 200, "B's Go-minted token accepted").await;
    let key = op.ctx.keys.borrow().fingerprint();

    // Revocation on request: annotate the Secret.
    a_secrets
        .patch(
            "insights-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"insights.lagoon.sh/revoke-tokens": "leaked"}}})),
        )
        .await
        .unwrap();
    let second = wait_secret(&a_secrets, "A re-minted after the revocation", |s| {
        token_of(s) != t1
            && !s
                .annotations()
                .contains_key("insights.lagoon.sh/revoke-tokens")
    })
    .await;
    assert_eq!(second.uid(), first.uid(), "updated in place");
    let t2 = token_of(&second);
    let body = post_until(&url, &t1, 401, "A's old token refused").await;
    assert!(body.contains("revoked"), "{body}");
    post_until(&url, &t2, 200, "A's new token accepted").await;
    post_until(&url, &go, 200, "B untouched").await;
    assert_eq!(
        op.ctx.keys.borrow().fingerprint(),
        key,
        "the key did not change"
    );
    assert_eq!(
        ring().verify(&t1).unwrap().namespace,
        a.name,
        "t1's signature is still good"
    );

    // Revocation by deleting the Secret: a new one, the old tokens refused.
    a_secrets
        .delete("insights-token", &DeleteParams::default())
        .await
        .unwrap();
    let third = wait_secret(&a_secrets, "A re-created", |s| s.uid() != second.uid()).await;
    let t3 = token_of(&third);
    post_until(
        &url,
        &t2,
        401,
        "A's token refused after its Secret was deleted",
    )
    .await;
    post_until(&url, &t3, 200, "A's newest token accepted").await;
    post_until(&url, &go, 200, "B still untouched").await;

    // A namespace claiming A's environment id: an Event, no token, and a
    // token made for it anyway is refused.
    let c = TestNamespace::with_labels(&client, "revc", labelled(&id_a)).await;
    let ev = namespace_event(&client, "DuplicateEnvironmentId", &c.name).await;
    assert!(ev.note.unwrap().contains(&a.name));
    let c_secrets: Api<Secret> = Api::namespaced(client.clone(), &c.name);
    assert!(c_secrets.get_opt("insights-token").await.unwrap().is_none());
    let forged = ring().mint(&common::claims(&c.name, &id_a)).unwrap();
    let body = post_until(&url, &forged, 401, "the duplicate's token refused").await;
    assert!(body.contains("another namespace"), "{body}");

    // A deleted namespace's tokens are refused.
    b.cleanup().await;
    let body = post_until(&url, &go, 401, "B's token refused once B is deleted").await;
    assert!(body.contains("namespace"), "{body}");
    post_until(&url, &t3, 200, "A unaffected").await;
    op.stop().await;
    c.cleanup().await;
    a.cleanup().await;
}
