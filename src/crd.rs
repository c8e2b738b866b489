//! The InsightsRemoteConfig custom resource.

/// The CRD as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    String::new()
}
