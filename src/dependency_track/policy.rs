//! Where a namespace's own Dependency-Track endpoint may point. The
//! endpoint comes from a ConfigMap annotation, so a tenant chooses it: by
//! default it may name any host except loopback, link-local (cloud metadata
//! services live there), unspecified or multicast addresses, and the
//! Kubernetes API server's addresses, checked on the addresses the name
//! resolves to (a name that resolves to 127.0.0.1 is refused like
//! 127.0.0.1). An admin can instead list the hosts allowed
//! (`--dependency-track-custom-endpoint-hosts`, exact names or `*.suffix`);
//! then only those are, with whatever addresses they resolve to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Which custom endpoints may be called.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Lower-case host names, IP addresses, or `*.suffix`; empty: any host
    /// whose addresses are not internal.
    pub allowed: Vec<String>,
    /// The Kubernetes API server's addresses (the in-cluster Service and
    /// the address the operator reaches it at).
    pub api_server: Vec<IpAddr>,
}

/// Why an address may not be called, if it may not.
pub fn internal(ip: IpAddr, api_server: &[IpAddr]) -> Option<&'static str> {
    let ip = match ip {
        // IPv4-mapped, and NAT64's well-known prefix 64:ff9b::/96.
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let o = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    // Cloud metadata and host services outside link-local: Alibaba's,
    // Azure's WireServer, AWS's IPv6 instance metadata.
    const METADATA: [&str; 3] = ["100.100.100.200", "168.63.129.16", "fd00:ec2::254"];
    if METADATA
        .iter()
        .any(|m| m.parse::<IpAddr>().ok() == Some(ip))
    {
        return Some("a cloud metadata service");
    }
    // The address's class first (a loopback API server is refused as
    // loopback), then the API server's own addresses.
    let class = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        _ => None,
    };
    class.or_else(|| {
        api_server
            .contains(&ip)
            .then_some("the Kubernetes API server")
    })
}

impl EndpointPolicy {
    /// From the flag's comma-separated list and the API server's addresses.
    pub fn new(allowed: &str, api_server: Vec<IpAddr>) -> Self {
        EndpointPolicy {
            allowed: allowed
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            api_server,
        }
    }

    /// Whether the admin's list names this host (always false without one).
    pub fn listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => p == host,
        })
    }

    /// Checks an endpoint URL before any connection: its scheme, that it
    /// holds no credentials, its host against the list, and an address
    /// given literally. Names are checked again when they resolve
    /// ([`GuardedResolver`]).
    pub fn check_url(&self, endpoint: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(endpoint.trim())
            .map_err(|_| "the Dependency-Track endpoint is not a valid URL".to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("the Dependency-Track endpoint is not an http(s) URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the Dependency-Track endpoint must not hold credentials".into());
        }
        let host = match url.host() {
            Some(h) => h,
            None => return Err("the Dependency-Track endpoint has no host".into()),
        };
        let name = host.to_string();
        if !self.allowed.is_empty() {
            return if self.listed(&name) {
                Ok(url)
            } else {
                Err(format!(
                    "the Dependency-Track endpoint's host {name} is not among the hosts the cluster's admin allows"
                ))
            };
        }
        let literal = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        if let Some(why) = literal.and_then(|ip| internal(ip, &self.api_server)) {
            return Err(format!(
                "the Dependency-Track endpoint's address is {why}, which per-namespace endpoints may not call"
            ));
        }
        Ok(url)
    }
}

/// Resolves names for per-namespace uploads, refusing any that resolves to
/// an internal address (unless the admin listed the host).
pub struct GuardedResolver(pub Arc<EndpointPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // Names are checked whatever the list says: a listed suffix
            // can hold a name (an ExternalName Service, a tenant's own DNS)
            // that resolves to loopback or a metadata address. Only an
            // address the admin listed literally skips the check (reqwest
            // resolves no literal, so this sees names only).
            {
                if let Some(why) = addrs
                    .iter()
                    .find_map(|a| internal(a.ip(), &policy.api_server))
                {
                    return Err(format!(
                        "{host} resolves to an address that is {why}, which per-namespace endpoints may not call"
                    )
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        let api: Vec<IpAddr> = vec!["10.96.0.1".parse().unwrap()];
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.5.6.7", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("10.96.0.1", Some("the Kubernetes API server")),
            ("::ffff:10.96.0.1", Some("the Kubernetes API server")),
            ("10.96.0.2", None),
            ("100.100.100.200", Some("a cloud metadata service")),
            ("168.63.129.16", Some("a cloud metadata service")),
            ("fd00:ec2::254", Some("a cloud metadata service")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("192.168.1.10", None),
            ("203.0.113.5", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(internal(ip.parse().unwrap(), &api), want, "{ip}");
        }
    }

    #[test]
    fn urls_by_default_and_with_a_list() {
        let open = EndpointPolicy::new("", vec!["10.96.0.1".parse().unwrap()]);
        for (url, ok) in [
            ("https://dt.example.com", true),
            ("http://dependency-track.tools.svc:8080/", true),
            ("http://127.0.0.1:8080", false),
            ("http://[::1]:8080", false),
            ("http://169.254.169.254/latest", false),
            ("https://10.96.0.1", false),
            ("http://0x7f.1", false),
            ("ftp://dt.example.com", false),
            ("https://user:pw@dt.example.com", false),
            ("not a url", false),
        ] {
            assert_eq!(open.check_url(url).is_ok(), ok, "{url}");
        }
        let listed = EndpointPolicy::new(" dt.example.com, *.tools.svc ,127.0.0.1", vec![]);
        for (url, ok) in [
            ("https://dt.example.com", true),
            ("https://DT.example.com.", true),
            ("https://evil.example.com", false),
            ("http://dependency-track.tools.svc:8080", true),
            ("http://tools.svc", false),
            ("http://x.notools.svc", false),
            ("http://127.0.0.1:8081", true),
            ("http://127.0.0.2:8081", false),
        ] {
            assert_eq!(listed.check_url(url).is_ok(), ok, "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        use reqwest::dns::Resolve;
        let r = GuardedResolver(Arc::new(EndpointPolicy::default()));
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
        // Listing a name does not let it resolve to loopback.
        let listed = GuardedResolver(Arc::new(EndpointPolicy::new("localhost", vec![])));
        assert!(listed.resolve("localhost".parse().unwrap()).await.is_err());
    }
}
