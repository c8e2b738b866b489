//! Lagoon core's real consumer for end-to-end tests: insights-handler (built
//! by hack/lagoon-core.sh from ../shared/lagoon-core) on a RabbitMQ vhost of
//! the test's own, calling a Lagoon API stand-in (hack/lagoon_api.py) that
//! executes every request against the real schema and records mutations.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use insights_remote::broker::BrokerSettings;
use serde_json::{json, Value};

use super::{broker_host, free_port, rabbitmqctl, unique};

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// Builds the handler once per test binary; its directory.
fn handler_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(format!("{}/hack/lagoon-core.sh", root()))
            .stderr(Stdio::inherit())
            .output()
            .expect("hack/lagoon-core.sh runs");
        assert!(out.status.success(), "hack/lagoon-core.sh failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

pub struct Consumer {
    pub vhost: String,
    pub api_url: String,
    api: Child,
    handler: Child,
    log: std::path::PathBuf,
}

impl Consumer {
    /// Starts the API stand-in and the handler on a new vhost, and waits
    /// until the handler consumes.
    pub async fn start(tag: &str) -> Consumer {
        let dir = handler_dir().to_string();
        let vhost = unique(&format!("e2e-{tag}"));
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let port = free_port();
        let api = Command::new("python3")
            .args([&format!("{}/hack/lagoon_api.py", root()), &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the Lagoon API stand-in");
        let api_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{api_url}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the Lagoon API stand-in starts");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (host, amqp_port) = broker_host()
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        let log = std::env::temp_dir().join(format!("{vhost}-handler.log"));
        let handler = Command::new(format!("{dir}/insights-handler-bin"))
            .current_dir(format!("{dir}/insights-handler"))
            .args([
                "--startup-connection-attempts",
                "5",
                "--startup-connection-interval-seconds",
                "1",
                "--rabbitmq-reconnect-retry-interval",
                "1",
            ])
            .env("RABBITMQ_ADDRESS", host)
            // The handler's DSN hard-codes vhost "/"; a fragment after the
            // port carries another one.
            .env("RABBITMQ_PORT", format!("{amqp_port}/{vhost}#"))
            .env("RABBITMQ_USERNAME", "guest")
            .env("RABBITMQ_PASSWORD", "guest")
            .env("GRAPHQL_ENDPOINT", format!("{api_url}/graphql"))
            .env("JWT_SECRET", "e2e-secret")
            .env("INSIGHTS_DISABLE_S3_UPLOAD", "true")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).unwrap(),
            ))
            .spawn()
            .expect("insights-handler starts");
        let c = Consumer {
            vhost,
            api_url,
            api,
            handler,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = rabbitmqctl(&["list_queues", "-q", "-p", &c.vhost, "name", "consumers"]);
            if out.lines().any(|l| {
                l.starts_with("lagoon-insights:items")
                    && !l.trim().ends_with(" 0")
                    && !l.trim().ends_with("\t0")
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "insights-handler consumes (log: {})",
                c.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c
    }

    /// Publisher settings for the queue the handler consumes.
    pub fn broker(&self) -> BrokerSettings {
        BrokerSettings {
            host: broker_host(),
            vhost: self.vhost.clone(),
            reconnect_interval: Duration::from_millis(500),
            confirm_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// Makes an environment known to the API.
    pub async fn seed(&self, id: i64, project: (i64, &str), name: &str, namespace: &str) {
        reqwest::Client::new()
            .post(format!("{}/seed", self.api_url))
            .json(&json!({"environments": [{"id": id, "name": name, "kubernetesNamespaceName": namespace,
                "project": {"id": project.0, "name": project.1}}]}))
            .send()
            .await
            .unwrap();
    }

    /// Every mutation the API executed, and every request it refused.
    pub async fn recorded(&self) -> (Vec<Value>, Vec<Value>) {
        let v: Value = reqwest::get(format!("{}/mutations", self.api_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["mutations"].as_array().cloned().unwrap_or_default(),
            v["errors"].as_array().cloned().unwrap_or_default(),
        )
    }

    /// Waits until `want` mutations matching `pred` were recorded.
    pub async fn wait_mutations(
        &self,
        what: &str,
        want: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (m, errors) = self.recorded().await;
            let hits: Vec<Value> = m.into_iter().filter(|m| pred(m)).collect();
            if hits.len() >= want {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; API errors: {errors:?}; handler log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
                    + &std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the handler process is still running (a crash ends it).
    pub fn alive(&mut self) -> bool {
        self.handler.try_wait().unwrap().is_none()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.handler.kill();
        let _ = self.api.kill();
        let _ = self.handler.wait();
        let _ = self.api.wait();
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
    }
}

/// The mutation's name.
pub fn name(m: &Value) -> &str {
    m["name"].as_str().unwrap_or_default()
}
