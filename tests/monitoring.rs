//! Day two: the chart's alert rules and dashboard (charts/insights-remote/
//! files/) pass promtool (syntax and unit tests), render from the chart,
//! and name only metrics that a pod running on the node (hack/node.sh)
//! really exposes.
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::{client, wait_for};
use common::node::{environment_token, helm, node_environment, root, Release};
use common::{body_text, run_ok};

const ALERTS: &str = "charts/insights-remote/files/alerts.yaml";
const DASHBOARD: &str = "charts/insights-remote/files/dashboard.json";

fn tools() -> PathBuf {
    let out = run_ok(
        "hack/promtool.sh",
        Command::new("bash").arg(root().join("hack/promtool.sh")),
    );
    PathBuf::from(out.trim())
}

#[test]
fn the_alert_rules_pass_promtool_and_its_unit_tests() {
    let promtool = tools().join("promtool");
    let out = run_ok(
        "promtool check rules",
        Command::new(&promtool)
            .args(["check", "rules", ALERTS])
            .current_dir(root()),
    );
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let out = run_ok(
        "promtool test rules",
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yaml"])
            .current_dir(root().join("tests/monitoring")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_chart_ships_the_rules_and_the_dashboard() {
    let rendered = helm(&[
        "template",
        "x",
        "charts/insights-remote",
        "--set",
        "rabbitMQHostname=r:5672,rabbitMQUsername=u,rabbitMQPassword=p",
        "--set",
        "monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true",
    ]);
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind)
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| kind != "ConfigMap" || n.ends_with("-dashboard"))
            })
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    };
    let rule = find("PrometheusRule");
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(ALERTS)).unwrap()).unwrap();
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "the rule file, unchanged"
    );
    let cm = find("ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value =
        serde_json::from_str(cm["data"]["insights-remote.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap()).unwrap();
    assert_eq!(json, file, "the dashboard, unchanged");
}

#[tokio::test]
async fn every_query_names_metrics_a_running_pod_exposes() {
    let client = client().await;
    tokio::task::spawn_blocking(common::node::node)
        .await
        .unwrap();
    let (env, _) = node_environment(&client, "mon").await;
    let release = Release::install(
        &client,
        &env.name,
        &[
            "--set".into(),
            "metrics.enabled=true,metrics.secure=false".into(),
        ],
    )
    .await;
    let pod = release.pods().await.pop().unwrap();
    let ip = pod.status.unwrap().pod_ip.unwrap();

    // One post, so that the request metrics have their series.
    let token = environment_token(&client, &env.name).await;
    let http = reqwest::Client::new();
    wait_for("a post answered 200", Duration::from_secs(30), || async {
        let r = http
            .post(format!("http://{ip}:8888/facts"))
            .header("Authorization", &token)
            .header("Content-Type", "application/json")
            .body(r#"[{"name":"n","value":"v","source":"mon","type":"TEXT"}]"#)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let exposition = body_text(http.get(format!("http://{ip}:8080/metrics"))).await;
    let exposed: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let out = run_ok(
        "promql-names",
        Command::new(tools().join("promql-names"))
            .args([ALERTS, DASHBOARD])
            .current_dir(root()),
    );
    let mut queries = 0;
    let mut missing = Vec::new();
    for line in out.lines() {
        let q: serde_json::Value = serde_json::from_str(line).unwrap();
        queries += 1;
        let names = q["metrics"].as_array().unwrap();
        assert!(!names.is_empty(), "{q}: selects no metric");
        for n in names {
            if !exposed.contains(n.as_str().unwrap()) {
                missing.push(format!("{} ({}): {}", q["file"], q["where"], n));
            }
        }
    }
    assert!(queries >= 20, "every rule and panel query read ({queries})");
    assert!(
        missing.is_empty(),
        "queries name metrics the pod does not expose: {missing:#?}\n{exposition}"
    );

    release.uninstall().await;
    env.cleanup().await;
}
