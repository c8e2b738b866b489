//! Dependency-Track uploads of SBOM ConfigMaps, as upstream v0.0.19's
//! post-processors do: the project hierarchy from name templates (parents as
//! collection projects aggregating their direct children), the BOM uploaded
//! under its parent with auto-create, then waiting until Dependency-Track
//! has processed it.
//!
//! The decisions (templates, which project, skip or upload) are pure
//! functions; [`Client`] only talks HTTP.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | templates and targets (pure), [`Client`], [`lagoon_env`] |
//! | `body.rs` | the BOM of the multipart upload, decompressed as it is sent |
//! | `policy.rs` | where a namespace's own endpoint may point ([`EndpointPolicy`], [`GuardedResolver`]) |
//! | `uploads.rs` | uploads in the background, a bounded number at a time ([`Uploads`]) |

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{debug, warn};

mod body;
mod policy;
mod step;
mod uploads;

pub use policy::{internal, EndpointPolicy, GuardedResolver};
pub use step::{run_step, UploadStep};
pub use uploads::{Key, Uploads};

use crate::contract::{
    percent_encode, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE, LABEL_PROJECT, LABEL_SERVICE,
};

pub use crate::contract::ANNOTATION_CUSTOM_ENDPOINT;
pub use crate::postprocess::skip_reason;
/// The namespace Secret holding the per-namespace key and override.
pub const LAGOON_ENV_SECRET: &str = "lagoon-env";
pub const KEY_API_KEY: &str = "LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_API_KEY";
pub const KEY_PUSH_PROD_ONLY: &str = "LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_PUSH_PROD_ONLY";

pub use crate::settings::dependency_track::{
    Settings, Template, Templates, DEFAULT_PARENT_TEMPLATE, DEFAULT_PROJECT_TEMPLATE,
    DEFAULT_ROOT_TEMPLATE, DEFAULT_VERSION_TEMPLATE,
};

/// A template filled with the ConfigMap's environment.
fn render(t: &Template, info: &WriteInfo) -> String {
    t.render_with(|field| match field {
        "ProjectName" => &info.project,
        "EnvironmentName" => &info.environment,
        "ServiceName" => &info.service,
        "EnvironmentType" => &info.environment_type,
        _ => "",
    })
}

/// What the templates are filled with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteInfo {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub environment_type: String,
}

impl WriteInfo {
    /// Project and environment from the namespace's labels, else the
    /// ConfigMap's; the service from the ConfigMap; the environment type
    /// from the ConfigMap, `unknown` when absent.
    /// From a ConfigMap's labels as published (src/identity.rs: project,
    /// environment and environment type are its namespace's).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<WriteInfo, String> {
        let get = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
        Ok(WriteInfo {
            project: get(LABEL_PROJECT).ok_or("no project name found (label lagoon.sh/project)")?,
            environment: get(LABEL_ENVIRONMENT)
                .ok_or("no environment name found (label lagoon.sh/environment)")?,
            service: get(LABEL_SERVICE).ok_or("no service found (label lagoon.sh/service)")?,
            environment_type: get(LABEL_ENVIRONMENT_TYPE).unwrap_or_else(|| "unknown".into()),
        })
    }
}

/// Where one BOM goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Collection projects, outermost first.
    pub parents: Vec<String>,
    pub project: String,
    pub version: String,
    pub tags: Vec<String>,
}

/// Upstream's rule for the hierarchy: with a parent template the parents are
/// the root (if its template is set) then the parent; without one, none.
/// Empty rendered names are left out rather than created.
pub fn target(t: &Templates, info: &WriteInfo, cm_labels: &BTreeMap<String, String>) -> Target {
    let mut parents = Vec::new();
    if !t.parent.is_empty() {
        if !t.root.is_empty() {
            parents.push(render(&t.root, info));
        }
        parents.push(render(&t.parent, info));
    }
    parents.retain(|p| !p.is_empty());
    Target {
        parents,
        project: render(&t.project, info),
        version: render(&t.version, info),
        tags: cm_labels
            .get(LABEL_ENVIRONMENT_TYPE)
            .map(|t| vec![format!("lagoon-environmenttype-{t}")])
            .unwrap_or_default(),
    }
}

/// The per-namespace push-prod-only: the `lagoon-env` value when it parses
/// as Go's ParseBool does, else the global one (and a warning to log).
pub fn prod_only_override(global: bool, value: Option<&str>) -> (bool, Option<String>) {
    match value.map(str::trim) {
        None | Some("") => (global, None),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => (true, None),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => (false, None),
        Some(other) => (
            global,
            Some(format!(
                "{KEY_PUSH_PROD_ONLY}={other:?} is not a boolean; using the global push-prod-only ({global})"
            )),
        ),
    }
}

/// The namespace's `lagoon-env` Secret, as text.
pub async fn lagoon_env(
    client: &kube::Client,
    ns: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get(LAGOON_ENV_SECRET)
        .await
        .map_err(|e| Error::LagoonEnv(e.to_string()))?;
    // The API server returns `data` only (`stringData` is write-only).
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// Why a Dependency-Track step failed. The texts land in the ConfigMap's
/// annotations and Events, which the namespace's tenant reads: they say
/// the status or the class of error, never what a server answered (that
/// goes to the log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Dependency-Track endpoint {0:?} is not an http(s) URL")]
    NotHttp(String),
    #[error("no Dependency-Track API key")]
    NoKey,
    #[error("Dependency-Track endpoint must not hold credentials")]
    Credentials,
    #[error("the Dependency-Track endpoint must not hold a query or a fragment")]
    QueryOrFragment,
    /// The admin's policy for per-namespace endpoints refused it.
    #[error("{0}")]
    Policy(String),
    #[error("reading Secret {LAGOON_ENV_SECRET}: {0}")]
    LagoonEnv(String),
    #[error("{method} {path}: {class}")]
    Connection {
        method: String,
        path: String,
        class: &'static str,
    },
    #[error("{method} {path}: status {status}, {detail}")]
    Unreadable {
        method: String,
        path: String,
        status: u16,
        detail: String,
    },
    #[error("{method} {path}: status {status}")]
    Refused {
        method: String,
        path: String,
        status: u16,
    },
    #[error("the Dependency-Track server's version is older than 4.11.0 (or not given)")]
    TooOld,
    #[error("project {name:?} exists, but not under parent {parent}")]
    UnderOtherParent { name: String, parent: String },
    #[error("project {0:?} exists, but not at the top level")]
    NotAtTop(String),
    #[error("creating project {name:?}: status {status}")]
    NotCreated { name: String, status: u16 },
    #[error("creating project {0:?}: conflict")]
    Conflict(String),
    #[error("POST /api/v1/bom: status {0}, no token")]
    NoToken(u16),
    #[error("Dependency-Track had not processed the BOM after {0}s")]
    NotProcessed(u64),
    #[error("{0}")]
    Request(String),
    #[error("the upload failed unexpectedly (a bug: see the log)")]
    Panicked,
    #[error("the upload did not finish within {0}s")]
    Unfinished(u64),
}

/// One Dependency-Track API server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The endpoint as given, without a trailing slash: the API's paths
    /// are appended to its own (Dependency-Track may live under a prefix).
    base: url::Url,
    key: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish()
    }
}

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_secs(1);

impl Client {
    pub fn new(http: reqwest::Client, endpoint: &str, key: &str) -> Result<Client, Error> {
        let given = endpoint.trim().trim_end_matches('/');
        let base = url::Url::parse(given)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| Error::NotHttp(given.to_string()))?;
        if key.is_empty() {
            return Err(Error::NoKey);
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::Credentials);
        }
        Ok(Client {
            http,
            base,
            key: key.to_string(),
        })
    }

    /// The endpoint's URL with an API path (and query) appended.
    fn url(&self, path_and_query: &str) -> url::Url {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut u = self.base.clone();
        u.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        u.set_query(query);
        u
    }

    /// A client for a namespace's own endpoint: the URL checked against the
    /// admin's policy first (`http` resolves names through
    /// [`GuardedResolver`]). The endpoint is kept as parsed, so a `#` or
    /// `?` in it cannot cut off the paths appended to it.
    pub fn custom(
        http: reqwest::Client,
        policy: &EndpointPolicy,
        endpoint: &str,
        key: &str,
    ) -> Result<Client, Error> {
        let url = policy.check_url(endpoint).map_err(Error::Policy)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::QueryOrFragment);
        }
        Client::new(http, url.as_str(), key)
    }

    /// A shared HTTP client for all uploads.
    pub fn http() -> reqwest::Client {
        Self::builder().build().expect("the HTTP client builds")
    }

    /// The client for per-namespace endpoints: every name resolved through
    /// `resolver`, and no proxy from the environment (a proxy would
    /// resolve the name itself, past the policy).
    pub fn http_resolving_with(resolver: std::sync::Arc<GuardedResolver>) -> reqwest::Client {
        Self::builder()
            .dns_resolver(resolver)
            .no_proxy()
            .build()
            .expect("the HTTP client builds")
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // The key is a header reqwest would carry across redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("insights-remote/", env!("CARGO_PKG_VERSION")))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("X-Api-Key", &self.key)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        self.answer(req, &method, path).await
    }

    /// Sends a request and reads its answer. A failure says the HTTP status
    /// or the class of connection error and nothing the server wrote: the
    /// text lands in the ConfigMap's annotations and Events, which the
    /// namespace's tenant reads, and a tenant's own endpoint could make it
    /// say anything. The detail is logged for the admin.
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        method: &reqwest::Method,
        path: &str,
    ) -> Result<(u16, Value), Error> {
        let (m, p) = (method.to_string(), path.to_string());
        let started = std::time::Instant::now();
        let resp = req.send().await.map_err(|e| {
            warn!(endpoint = %self.base, %method, path, error = %with_causes(&e), "Dependency-Track request failed");
            Error::Connection { method: m.clone(), path: p.clone(), class: error_class(&e) }
        })?;
        let status = resp.status().as_u16();
        let body = read_bounded(resp).await;
        debug!(endpoint = %self.base, %method, path, status, ms = started.elapsed().as_millis() as u64, "Dependency-Track answered");
        let body = body.map_err(|e| {
            warn!(endpoint = %self.base, %method, path, error = %e, "reading Dependency-Track's answer failed");
            let detail = if e.starts_with("response larger than") {
                e
            } else {
                "the answer could not be read".to_string()
            };
            Error::Unreadable { method: m.clone(), path: p.clone(), status, detail }
        })?;
        if !(200..300).contains(&status) && status != 409 {
            let text = String::from_utf8_lossy(&body);
            let short: String = text.chars().take(200).collect();
            warn!(endpoint = %self.base, %method, path, status, answer = %short.escape_debug(), "Dependency-Track refused a request");
            return Err(Error::Refused {
                method: m,
                path: p,
                status,
            });
        }
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Upstream's check: the token API needs 4.11 or later. The version
    /// found is logged, not returned (see [`Client::answer`]).
    async fn check_version(&self) -> Result<(), Error> {
        let (_, v) = self
            .call(reqwest::Method::GET, "/api/version", None)
            .await?;
        let version = v["version"].as_str().unwrap_or_default();
        if !recent_enough(version) {
            warn!(endpoint = %self.base, version = %version.escape_debug(), "Dependency-Track is older than 4.11.0");
            return Err(Error::TooOld);
        }
        Ok(())
    }

    /// The project `name` directly under `parent` (at the top when None),
    /// created as a collection project if absent. A project of that name
    /// under another parent is an error, not silently reused.
    async fn collection(&self, name: &str, parent: Option<&str>) -> Result<String, Error> {
        for attempt in 0..2 {
            let path = format!(
                "/api/v1/project?name={}&excludeInactive=true&onlyRoot=false",
                percent_encode(name)
            );
            let (_, found) = self.call(reqwest::Method::GET, &path, None).await?;
            let uuids: Vec<String> = found
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["name"].as_str() == Some(name))
                .filter_map(|p| p["uuid"].as_str().map(String::from))
                .collect();
            for uuid in &uuids {
                // The list omits "parent"; the project itself has it.
                let (_, p) = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/api/v1/project/{uuid}"),
                        None,
                    )
                    .await?;
                if p["parent"]["uuid"].as_str() == parent {
                    return Ok(uuid.clone());
                }
            }
            if !uuids.is_empty() {
                return Err(match parent {
                    Some(p) => Error::UnderOtherParent {
                        name: name.to_string(),
                        parent: p.to_string(),
                    },
                    None => Error::NotAtTop(name.to_string()),
                });
            }
            let mut body = json!({
                "name": name,
                "active": true,
                "classifier": "APPLICATION",
                "collectionLogic": "AGGREGATE_DIRECT_CHILDREN",
            });
            if let Some(p) = parent {
                body["parent"] = json!({ "uuid": p });
            }
            let (status, created) = self
                .call(reqwest::Method::PUT, "/api/v1/project", Some(&body))
                .await?;
            match (status, created["uuid"].as_str()) {
                (409, _) if attempt == 0 => continue, // created meanwhile: look again
                (_, Some(uuid)) => return Ok(uuid.to_string()),
                _ => {
                    return Err(Error::NotCreated {
                        name: name.to_string(),
                        status,
                    })
                }
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// Uploads one BOM to `target` and waits until Dependency-Track has
    /// processed it, at most `wait`. `payload` is the ConfigMap's payload
    /// (gzip or plain CycloneDX JSON), decompressed as it is sent, up to
    /// `limit` bytes ([`body::stream`]).
    ///
    /// The hierarchy and the BOM's own project (auto-created) are made by
    /// one upload at a time per endpoint and root project: concurrent
    /// uploads of one project created its parents twice otherwise
    /// (Dependency-Track does not refuse a second project of the same
    /// name).
    pub async fn upload(
        &self,
        target: &Target,
        payload: Vec<u8>,
        limit: u64,
        wait: Duration,
    ) -> Result<(), Error> {
        self.check_version().await?;
        // Per endpoint and root project: uploads of different Lagoon
        // projects run side by side; those sharing a root (its parents
        // and leaves) one at a time.
        let root = target.parents.first().unwrap_or(&target.project);
        let one_at_a_time = hierarchy_lock(&format!("{}\n{root}", self.base.as_str()));
        let token = {
            let _held = one_at_a_time.lock().await;
            let mut parent: Option<String> = None;
            for name in &target.parents {
                parent = Some(self.collection(name, parent.as_deref()).await?);
            }
            // Multipart, as Dependency-Track's POST takes it: the BOM as a
            // file part, streamed; tags comma-separated (a comma inside a
            // tag would split it, so it becomes a dash).
            let mut form = reqwest::multipart::Form::new()
                .text("projectName", target.project.clone())
                .text("autoCreate", "true");
            if !target.version.is_empty() {
                form = form.text("projectVersion", target.version.clone());
            }
            if let Some(p) = &parent {
                form = form.text("parentUUID", p.clone());
            }
            if !target.tags.is_empty() {
                let tags: Vec<String> = target.tags.iter().map(|t| t.replace(',', "-")).collect();
                form = form.text("projectTags", tags.join(","));
            }
            let bom = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(body::stream(
                payload, limit,
            )))
            .file_name("bom.json")
            .mime_str("application/json")
            .map_err(|e| Error::Request(e.to_string()))?;
            let form = form.part("bom", bom);
            let path = "/api/v1/bom";
            let req = self
                .http
                .post(self.url(path))
                .header("X-Api-Key", &self.key)
                .header("Accept", "application/json")
                .multipart(form);
            let (status, resp) = self.answer(req, &reqwest::Method::POST, path).await?;
            match (status, resp["token"].as_str()) {
                (200..=299, Some(t)) => t.to_string(),
                _ => return Err(Error::NoToken(status)),
            }
        };
        drop(one_at_a_time);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::time::sleep(POLL_EVERY.min(wait)).await;
            let (_, ev) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/event/token/{}", percent_encode(&token)),
                    None,
                )
                .await?;
            if ev["processing"] == Value::Bool(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotProcessed(wait.as_secs()));
            }
        }
    }
}

/// Upstream's check: the token API needs 4.11 or later. A version that is
/// not semver (missing parts are taken as 0) is too old.
fn recent_enough(version: &str) -> bool {
    let v = version.trim();
    let full = match v.matches('.').count() {
        0 if !v.is_empty() => format!("{v}.0.0"),
        1 => format!("{v}.0"),
        _ => v.to_string(),
    };
    semver::Version::parse(&full).is_ok_and(|v| (v.major, v.minor) >= (4, 11))
}

/// One lock per Dependency-Track endpoint and root project for making
/// projects; entries nobody holds are dropped on the next call.
fn hierarchy_lock(base: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    type Locks = HashMap<String, Arc<tokio::sync::Mutex<()>>>;
    static LOCKS: LazyLock<Mutex<Locks>> = LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry(base.to_string()).or_default().clone()
}

/// What a tenant may learn of a failed connection: its class only.
fn error_class(e: &reqwest::Error) -> &'static str {
    let text = with_causes(e).to_ascii_lowercase();
    if e.is_timeout() {
        "timed out"
    } else if text.contains("per-namespace endpoints may not call") {
        "the endpoint resolves to an address the cluster does not allow"
    } else if text.contains("dns") || text.contains("resolve") || text.contains("lookup") {
        "the host name could not be resolved"
    } else if text.contains("certificate") || text.contains("tls") {
        "the TLS handshake failed"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_request() {
        "the request could not be sent"
    } else {
        "the request failed"
    }
}

/// The most of a response body read (a hostile server cannot fill memory).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| with_causes(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes (the URL never holds the key).
fn with_causes(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::contract::string_map as labels;

    fn info() -> WriteInfo {
        WriteInfo {
            project: "demo".into(),
            environment: "main".into(),
            service: "cli".into(),
            environment_type: "production".into(),
        }
    }

    #[test]
    fn templates_render_the_supported_fields_and_refuse_the_rest() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("{{ .ProjectName }}", Ok("demo")),
            ("{{.ProjectName}}-{{ .EnvironmentName }}", Ok("demo-main")),
            (
                "{{ .ProjectName }}-{{ .EnvironmentName }}-{{ .ServiceName }}",
                Ok("demo-main-cli"),
            ),
            ("lagoon/{{ .EnvironmentType }}", Ok("lagoon/production")),
            ("unset", Ok("unset")),
            ("v{{ .Version }}", Ok("v")),
            ("", Ok("")),
            ("{{ .Namespace }}", Err("is not supported")),
            ("{{ printf \"%s\" .ProjectName }}", Err("is not supported")),
            ("{{ .ProjectName | upper }}", Err("is not supported")),
            ("{{- .ProjectName }}", Err("is not supported")),
            ("{{ .ProjectName ", Err("unclosed")),
        ];
        for (src, want) in cases {
            match (Template::parse(src), want) {
                (Ok(t), Ok(w)) => assert_eq!(render(&t, &info()), *w, "{src}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{src}: {e}"),
                (got, want) => panic!("{src}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            Templates::parse("", "", "", "").is_err(),
            "empty project name"
        );
    }

    #[test]
    fn hierarchy_follows_upstreams_rule() {
        let cm = labels(&[("lagoon.sh/environmentType", "production")]);
        let t = |root: &str, parent: &str| {
            target(
                &Templates::parse(root, parent, DEFAULT_PROJECT_TEMPLATE, "unset").unwrap(),
                &info(),
                &cm,
            )
        };
        let d = t(DEFAULT_ROOT_TEMPLATE, DEFAULT_PARENT_TEMPLATE);
        assert_eq!(d.parents, ["demo", "demo-main"]);
        assert_eq!(d.project, "demo-main-cli");
        assert_eq!(d.version, "unset");
        assert_eq!(d.tags, ["lagoon-environmenttype-production"]);
        assert_eq!(t("", DEFAULT_PARENT_TEMPLATE).parents, ["demo-main"]);
        // No parent template: no parents, even with a root (upstream's rule;
        // upstream then crashes, this uploads at the top level).
        assert!(t(DEFAULT_ROOT_TEMPLATE, "").parents.is_empty());
        assert!(target(&Templates::default(), &info(), &labels(&[]))
            .tags
            .is_empty());
    }

    #[test]
    fn write_info_from_the_published_labels_needs_a_service() {
        let published = labels(&[
            ("lagoon.sh/project", "ns-project"),
            ("lagoon.sh/environment", "ns-env"),
            ("lagoon.sh/service", "nginx"),
        ]);
        let i = WriteInfo::from_labels(&published).unwrap();
        assert_eq!(
            (
                i.project.as_str(),
                i.environment.as_str(),
                i.service.as_str(),
                i.environment_type.as_str()
            ),
            ("ns-project", "ns-env", "nginx", "unknown")
        );
        let no_service = labels(&[("lagoon.sh/project", "p"), ("lagoon.sh/environment", "e")]);
        assert!(WriteInfo::from_labels(&no_service)
            .unwrap_err()
            .contains("service"));
        assert!(
            WriteInfo::from_labels(&labels(&[("lagoon.sh/service", "s")]))
                .unwrap_err()
                .contains("project")
        );
    }

    #[test]
    fn prod_only_and_its_override() {
        let prod = labels(&[("lagoon.sh/environmentType", "production")]);
        let dev = labels(&[("lagoon.sh/environmentType", "development")]);
        assert_eq!(skip_reason(true, &prod), None);
        assert!(skip_reason(true, &dev).is_some());
        assert!(skip_reason(true, &labels(&[])).is_some());
        assert_eq!(skip_reason(false, &dev), None);
        let cases: &[(bool, Option<&str>, bool, bool)] = &[
            (true, None, true, false),
            (true, Some(""), true, false),
            (true, Some("false"), false, false),
            (true, Some("F"), false, false),
            (false, Some("TRUE"), true, false),
            (false, Some("1"), true, false),
            (true, Some("nope"), true, true),
            (false, Some("yes"), false, true),
        ];
        for (global, value, want, warns) in cases {
            let (got, warning) = prod_only_override(*global, *value);
            assert_eq!(
                (got, warning.is_some()),
                (*want, *warns),
                "{global} {value:?}"
            );
        }
    }

    #[test]
    fn settings_debug_hides_the_key() {
        let s = Settings {
            api_key: "odt_secret".into(),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("odt_secret"));
        let c = Client::new(Client::http(), "http://dt", "odt_secret").unwrap();
        assert!(!format!("{c:?}").contains("odt_secret"));
        assert!(Client::new(Client::http(), "dt:8080", "k").is_err());
        assert!(Client::new(Client::http(), "http://dt", "").is_err());
        assert!(Client::new(Client::http(), "https://user:pw@dt/x", "k").is_err());
        assert!(Client::new(Client::http(), "https://dt/a@b", "k").is_ok());
    }

    /// A one-connection HTTP server on loopback answering `response`.
    fn serve_once(response: Vec<u8>) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(&response);
            }
        });
        url
    }

    #[tokio::test]
    async fn a_hostile_server_gets_no_redirect_followed_and_fills_no_memory() {
        // A redirect to a server that would answer fine: not followed (the
        // X-Api-Key header would go along), so the call fails on the 302.
        let elsewhere = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"version\":\"4.14.2\"}"
                .to_vec(),
        );
        let redirect = serve_once(
            format!("HTTP/1.1 302 Found\r\nlocation: {elsewhere}/api/version\r\ncontent-length: 0\r\n\r\n")
                .into_bytes(),
        );
        let c = Client::new(Client::http(), &redirect, "odt_key").unwrap();
        let err = c
            .call(reqwest::Method::GET, "/api/version", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("status 302"), "{err}");
        // A body over the bound is refused, not read to the end.
        let mut huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_RESPONSE_BYTES + 1024 * 1024
        )
        .into_bytes();
        huge.extend(std::iter::repeat_n(b'x', MAX_RESPONSE_BYTES + 1024 * 1024));
        let big = serve_once(huge);
        let c = Client::new(Client::http(), &big, "odt_key").unwrap();
        let err = c
            .call(reqwest::Method::GET, "/api/version", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than"), "{err}");
        // An error reply with a multi-byte character where it is cut: no panic.
        let body = "é".repeat(400);
        let bad = serve_once(
            format!(
                "HTTP/1.1 500 Oops\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
        let c = Client::new(Client::http(), &bad, "odt_key").unwrap();
        let err = c
            .call(reqwest::Method::GET, "/api/version", None)
            .await
            .unwrap_err()
            .to_string();
        // What a tenant reads: the status, never the server's words.
        assert!(err.contains("status 500") && !err.contains('é'), "{err}");
    }

    #[test]
    fn version_and_paths() {
        assert!(recent_enough("4.11.0") && recent_enough("4.13.2") && recent_enough("5.0"));
        assert!(!recent_enough("4.10.9") && !recent_enough("") && !recent_enough("x"));
        let c = Client::new(Client::http(), "https://dt.example/prefix/", "k").unwrap();
        assert_eq!(
            c.url("/api/v1/project?name=a%20b&onlyRoot=false").as_str(),
            "https://dt.example/prefix/api/v1/project?name=a%20b&onlyRoot=false"
        );
        let c = Client::new(Client::http(), "http://dt:8080", "k").unwrap();
        assert_eq!(c.url("/api/version").as_str(), "http://dt:8080/api/version");
    }
}
