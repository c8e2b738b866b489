//! The Dependency-Track settings (flags, environment, custom resource):
//! where the central server is, its key, and the project name templates in
//! the Go-template syntax admins already have in their values.

use std::fmt;

pub const DEFAULT_ROOT_TEMPLATE: &str = "{{ .ProjectName }}";
pub const DEFAULT_PARENT_TEMPLATE: &str = "{{ .ProjectName }}-{{ .EnvironmentName }}";
pub const DEFAULT_PROJECT_TEMPLATE: &str =
    "{{ .ProjectName }}-{{ .EnvironmentName }}-{{ .ServiceName }}";
pub const DEFAULT_VERSION_TEMPLATE: &str = "unset";

/// The fields a template may use: those upstream's defaults and
/// documentation use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ProjectName,
    EnvironmentName,
    ServiceName,
    EnvironmentType,
    /// Upstream has it and never sets it: always empty.
    Version,
}

impl Field {
    fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }
}

const FIELDS: [(&str, Field); 5] = [
    ("ProjectName", Field::ProjectName),
    ("EnvironmentName", Field::EnvironmentName),
    ("ServiceName", Field::ServiceName),
    ("EnvironmentType", Field::EnvironmentType),
    ("Version", Field::Version),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A name template in the Go-template syntax admins already have in their
/// values: literal text and `{{ .Field }}` placeholders, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("template {source:?}: unclosed {{{{"))?;
            let action = after[..close].trim();
            let field = action
                .strip_prefix('.')
                .and_then(|name| FIELDS.iter().find(|(n, _)| *n == name))
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!(
                        "template {source:?}: {{{{ {action} }}}} is not supported; use literal text and {}",
                        FIELDS
                            .iter()
                            .map(|(n, _)| format!("{{{{ .{n} }}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template filled in: `value` gives each field's value by its name
    /// (`ProjectName`, `EnvironmentName`, `ServiceName`, `EnvironmentType`;
    /// `Version`, which upstream never sets, is always empty).
    pub fn render_with<'a>(&'a self, value: impl Fn(&str) -> &'a str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Field(Field::Version) => "",
                Part::Field(f) => value(f.name()),
            })
            .collect()
    }
}

/// The four name templates (`--dependency-track-*-template`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Templates {
    pub root: Template,
    pub parent: Template,
    pub project: Template,
    pub version: Template,
}

impl Templates {
    pub fn parse(root: &str, parent: &str, project: &str, version: &str) -> Result<Self, String> {
        let t = Templates {
            root: Template::parse(root)?,
            parent: Template::parse(parent)?,
            project: Template::parse(project)?,
            version: Template::parse(version)?,
        };
        if t.project.is_empty() {
            return Err("the Dependency-Track project name template is empty".into());
        }
        Ok(t)
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::parse(
            DEFAULT_ROOT_TEMPLATE,
            DEFAULT_PARENT_TEMPLATE,
            DEFAULT_PROJECT_TEMPLATE,
            DEFAULT_VERSION_TEMPLATE,
        )
        .expect("the defaults parse")
    }
}

/// The central Dependency-Track settings (flags, environment, custom
/// resource). The key never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub endpoint: String,
    pub api_key: String,
    pub templates: Templates,
    pub push_prod_only: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: false,
            endpoint: String::new(),
            api_key: String::new(),
            templates: Templates::default(),
            push_prod_only: true,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field(
                "api_key",
                &if self.api_key.is_empty() { "" } else { "<set>" },
            )
            .field("templates", &self.templates)
            .field("push_prod_only", &self.push_prod_only)
            .finish()
    }
}

impl Settings {
    /// Upstream's rule: the central upload runs only when switched on with
    /// both an endpoint and a key.
    pub fn central_active(&self) -> bool {
        self.enabled && !self.endpoint.is_empty() && !self.api_key.is_empty()
    }
    /// The per-namespace upload runs whenever the integration is on.
    pub fn custom_active(&self) -> bool {
        self.enabled
    }
}
