//! Environment tokens: HS256 JWTs naming a Lagoon environment.
//!
//! Claims are PascalCase strings exactly as the Go original writes them, so a
//! token minted by either implementation with the same key verifies in the
//! other. Verification pins HS256: `alg: none`, RS/ES algorithms and anything
//! else are refused before a signature is looked at.

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use josekit::jws::{alg::hmac::HmacJwsSigner, JwsHeader, JwsSigner, HS256};
use josekit::jwt::{self, JwtPayload};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// HS256 keys shorter than the hash output are refused (josekit requires it,
/// and a short HMAC key is weak).
pub const MIN_KEY_LEN: usize = 32;

/// The Go original's built-in default key: refused outside dev mode.
pub use crate::settings::INSECURE_DEFAULT_KEY;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("signing key is {0} bytes; HS256 keys must be at least {MIN_KEY_LEN} bytes (generate one with `openssl rand -hex 32`)")]
    KeyTooShort(usize),
    #[error("no token given")]
    Missing,
    #[error("token is not a valid HS256 JWT signed with a current key")]
    Invalid,
    #[error("token algorithm {0:?} is not accepted; only HS256 is")]
    WrongAlgorithm(String),
    #[error("token lacks claim {0}")]
    MissingClaim(&'static str),
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` in the future (beyond [`CLOCK_SKEW_SECS`]).
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("could not sign token: {0}")]
    Signing(String),
}

/// What a token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub environment_id: String,
    pub project_name: String,
    pub environment_name: String,
}

const CLAIM_NAMESPACE: &str = "Namespace";
const CLAIM_ENVIRONMENT_ID: &str = "EnvironmentId";
const CLAIM_PROJECT_NAME: &str = "ProjectName";
const CLAIM_ENVIRONMENT_NAME: &str = "EnvironmentName";

/// Seconds of clock difference tolerated for `nbf` and `iat` (replicas
/// and Lagoon's own minting may disagree slightly; the Go original allows
/// none).
pub const CLOCK_SKEW_SECS: f64 = 5.0;

/// A signing key and the previous keys still accepted during a rotation.
#[derive(Clone)]
pub struct KeyRing {
    current: Vec<u8>,
    /// Every accepted key, current first.
    keys: Vec<Vec<u8>>,
    signers: Vec<HmacJwsSigner>,
    /// Tokens this ring already verified (a workload sends the same token
    /// on every request). Belongs to the ring: a new key means a new, empty
    /// cache, so a dropped key's tokens are never served from here.
    verified: VerifiedTokens,
    /// The current key's fingerprint, computed once (the token reconciler
    /// asks for it on every check).
    fingerprint: String,
}

/// Token → what it said, for tokens already verified; bounded by bytes
/// (a token can be as long as a request head allows), the least useful
/// entries evicted first, so many tenants never make it a cliff.
type VerifiedTokens = moka::sync::Cache<String, Checked>;

fn verified_tokens() -> VerifiedTokens {
    moka::sync::Cache::builder()
        .max_capacity(VERIFIED_CACHE_BYTES)
        .weigher(|token: &String, _: &Checked| {
            u32::try_from(token.len() + CHECKED_BYTES).unwrap_or(u32::MAX)
        })
        .build()
}

/// A verified token: its claims, when it expires and when it was issued
/// (seconds since the epoch, as written; none in the Go original's).
#[derive(Clone, Debug)]
struct Checked {
    claims: Claims,
    expires: Option<SystemTime>,
    issued_at: Option<f64>,
}

/// The verified-token cache's size: about 20,000 tokens of Lagoon's size.
const VERIFIED_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// What an entry costs beside its token (claims, times, the map's share).
const CHECKED_BYTES: usize = 400;

impl fmt::Debug for KeyRing {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// HMAC of a fixed label under the key, truncated: names a key without
/// revealing it.
fn fingerprint_of(key: &[u8]) -> String {
    let signer = HS256
        .signer_from_bytes(key)
        .expect("key length was checked");
    let mut header = JwsHeader::new();
    header.set_token_type("JWT");
    let mut payload = JwtPayload::new();
    payload.set_subject("insights-remote key fingerprint");
    let t = jwt::encode_with_signer(&payload, &header, &signer).unwrap_or_default();
    t.rsplit('.')
        .next()
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect()
}

impl KeyRing {
    /// The key ring from the flags and environment (see
    /// [`crate::settings::KeyArgs::signing_keys`]).
    pub fn from_args(args: &crate::settings::KeyArgs) -> crate::Result<Self> {
        let keys = args.signing_keys()?;
        Self::with_previous(keys.current, keys.previous.iter())
            .map_err(|e| crate::Error::Config(e.to_string()))
    }

    /// A ring with one key. Keys shorter than [`MIN_KEY_LEN`] are refused.
    pub fn new(current: impl AsRef<[u8]>) -> Result<Self, TokenError> {
        Self::with_previous(current, std::iter::empty::<&[u8]>())
    }

    /// A ring that signs with `current` and also accepts `previous`.
    pub fn with_previous<I, K>(current: impl AsRef<[u8]>, previous: I) -> Result<Self, TokenError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let current = current.as_ref().to_vec();
        let mut keys = vec![current.clone()];
        keys.extend(previous.into_iter().map(|k| k.as_ref().to_vec()));
        let signers = keys.iter().map(|k| signer(k)).collect::<Result<_, _>>()?;
        let fingerprint = fingerprint_of(&current);
        Ok(Self {
            current,
            keys,
            signers,
            verified: verified_tokens(),
            fingerprint,
        })
    }

    /// Whether both rings hold exactly the same keys in the same roles: any
    /// change of key material (current or previous) must take effect.
    pub fn same_keys(&self, other: &KeyRing) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| bool::from(a.as_slice().ct_eq(b.as_slice())))
    }

    /// A short fingerprint of the current key (not reversible), for status
    /// and logs: lets an admin see which key is in use without showing it.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Mints a token for an environment.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let signer = HS256
            .signer_from_bytes(&self.current)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        let mut payload = JwtPayload::new();
        for (k, v) in [
            (CLAIM_NAMESPACE, &claims.namespace),
            (CLAIM_ENVIRONMENT_ID, &claims.environment_id),
            (CLAIM_PROJECT_NAME, &claims.project_name),
            (CLAIM_ENVIRONMENT_NAME, &claims.environment_name),
        ] {
            payload
                .set_claim(k, Some(Value::String(v.clone())))
                .map_err(|e| TokenError::Signing(e.to_string()))?;
        }
        payload.set_issued_at(&SystemTime::now());
        jwt::encode_with_signer(&payload, &header, &signer)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// Verifies with the current key only: a token Secret signed with a
    /// previous key is re-minted.
    pub fn verify_current(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_current_issued(token).map(|(claims, _)| claims)
    }

    /// [`KeyRing::verify_current`] with the token's `iat`.
    pub fn verify_current_issued(&self, token: &str) -> Result<(Claims, Option<f64>), TokenError> {
        let current = Self {
            current: self.current.clone(),
            keys: self.keys[..1].to_vec(),
            signers: self.signers[..1].to_vec(),
            verified: verified_tokens(),
            fingerprint: self.fingerprint.clone(),
        };
        current.verify_issued(token)
    }

    /// Verifies a token with the current key, then each previous key.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_issued(token).map(|(claims, _)| claims)
    }

    /// Like [`KeyRing::verify`], with the token's `iat` (seconds since the
    /// epoch; none when the token has none, as the Go original's).
    pub fn verify_issued(&self, token: &str) -> Result<(Claims, Option<f64>), TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if let Some(c) = self.verified.get(token) {
            if c.expires.is_none_or(|e| e >= SystemTime::now()) {
                return Ok((c.claims, c.issued_at));
            }
        }
        let checked = self.verify_uncached(token)?;
        let out = (checked.claims.clone(), checked.issued_at);
        self.verified.insert(token.to_string(), checked);
        Ok(out)
    }

    /// Checks the header (HS256 only), the signature against each key in
    /// constant time, then the time claims, without trusting any part of
    /// the token before its signature matched.
    fn verify_uncached(&self, token: &str) -> Result<Checked, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        // Pin the algorithm before anything else: the header is untrusted.
        let header: serde_json::Map<String, Value> = B64URL
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Invalid)?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == "HS256" => {}
            Some(Value::String(other)) => {
                return Err(TokenError::WrongAlgorithm(other.chars().take(16).collect()))
            }
            _ => return Err(TokenError::Invalid),
        }
        if header.contains_key("crit") {
            return Err(TokenError::Invalid);
        }
        let signature = B64URL.decode(signature).map_err(|_| TokenError::Invalid)?;
        let (signing_input, _) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let mut matched = false;
        for signer in &self.signers {
            let expected = signer
                .sign(signing_input.as_bytes())
                .map_err(|_| TokenError::Invalid)?;
            matched |= bool::from(expected.as_slice().ct_eq(signature.as_slice()));
        }
        if !matched {
            return Err(TokenError::Invalid);
        }
        let payload: serde_json::Map<String, Value> = B64URL
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Invalid)?;
        let expires = check_time_claims(&payload, SystemTime::now())?;
        let claim = |name: &'static str| -> Result<String, TokenError> {
            match payload.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(TokenError::MissingClaim(name)),
            }
        };
        let claims = Claims {
            namespace: claim(CLAIM_NAMESPACE)?,
            environment_id: claim(CLAIM_ENVIRONMENT_ID)?,
            project_name: claim(CLAIM_PROJECT_NAME)?,
            environment_name: claim(CLAIM_ENVIRONMENT_NAME)?,
        };
        // A number, or absent: check_time_claims refused anything else.
        let issued_at = payload.get("iat").and_then(Value::as_f64);
        Ok(Checked {
            claims,
            expires,
            issued_at,
        })
    }
}

/// `exp` in the past, `nbf` or `iat` in the future (beyond the skew), or
/// any of them not a number, refuse the token. Seconds are compared as
/// floats, so a huge value is just far away, never a panic. Returns when
/// the token expires, if it does.
fn check_time_claims(
    payload: &serde_json::Map<String, Value>,
    now: SystemTime,
) -> Result<Option<SystemTime>, TokenError> {
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let number = |name: &str| -> Result<Option<f64>, TokenError> {
        match payload.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(TokenError::Invalid),
            Some(_) => Err(TokenError::Invalid),
        }
    };
    if number("nbf")?.is_some_and(|nbf| nbf > now_s + CLOCK_SKEW_SECS)
        || number("iat")?.is_some_and(|iat| iat > now_s + CLOCK_SKEW_SECS)
    {
        return Err(TokenError::NotYetValid);
    }
    match number("exp")? {
        None => Ok(None),
        Some(exp) if exp <= now_s => Err(TokenError::Expired),
        Some(exp) => Ok(Some(
            std::time::Duration::try_from_secs_f64(exp)
                .ok()
                .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
                // Beyond what the clock can hold: never expires in practice.
                .unwrap_or(now + std::time::Duration::from_secs(100 * 365 * 86_400)),
        )),
    }
}

fn signer(key: &[u8]) -> Result<HmacJwsSigner, TokenError> {
    if key.len() < MIN_KEY_LEN {
        return Err(TokenError::KeyTooShort(key.len()));
    }
    HS256
        .signer_from_bytes(key)
        .map_err(|_| TokenError::KeyTooShort(key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn claims() -> Claims {
        Claims {
            namespace: "demo-project-main".into(),
            environment_id: "42".into(),
            project_name: "demo-project".into(),
            environment_name: "main".into(),
        }
    }

    /// Signs header.payload with HMAC-SHA256 the way any JWT library does,
    /// independently of KeyRing::mint, to build Go-shaped and hostile tokens.
    fn sign_raw(header: &str, payload: &str, key: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.as_bytes()),
            B64.encode(payload.as_bytes())
        );
        let signer = HS256.signer_from_bytes(key).unwrap();
        use josekit::jws::JwsSigner;
        let sig = signer.sign(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", B64.encode(sig))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn with_claims(extra: &str) -> String {
        sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(
                r#"{{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"demo-project-main","ProjectName":"demo-project"{extra}}}"#
            ),
            KEY.as_bytes(),
        )
    }

    #[test]
    fn time_claims_are_checked_without_panicking() {
        let ring = KeyRing::new(KEY).unwrap();
        let later = now() + 3600;
        let earlier = now() - 3600;
        for (extra, want) in [
            (format!(r#","nbf":{later}"#), Err(TokenError::NotYetValid)),
            (format!(r#","iat":{later}"#), Err(TokenError::NotYetValid)),
            (format!(r#","exp":{earlier}"#), Err(TokenError::Expired)),
            (r#","exp":"soon""#.to_string(), Err(TokenError::Invalid)),
            (r#","nbf":null"#.to_string(), Err(TokenError::Invalid)),
            // Far away, not a panic.
            (r#","exp":1e300"#.to_string(), Ok(())),
            (r#","iat":-1e300"#.to_string(), Ok(())),
            (
                format!(r#","nbf":{earlier},"iat":{earlier},"exp":{later}"#),
                Ok(()),
            ),
            // Within the tolerated skew.
            (format!(r#","iat":{}"#, now() + 2), Ok(())),
        ] {
            let got = ring.verify(&with_claims(&extra)).map(|_| ());
            assert_eq!(got, want, "{extra}");
        }
    }

    #[test]
    fn any_change_of_key_material_is_a_different_ring() {
        let other_prev = "abcdefabcdefabcdefabcdefabcdefab";
        let a = KeyRing::with_previous(KEY, [OTHER]).unwrap();
        assert!(a.same_keys(&KeyRing::with_previous(KEY, [OTHER]).unwrap()));
        // Same count, previous key replaced.
        assert!(!a.same_keys(&KeyRing::with_previous(KEY, [other_prev]).unwrap()));
        assert!(!a.same_keys(&KeyRing::new(KEY).unwrap()));
        assert!(!a.same_keys(&KeyRing::with_previous(OTHER, [KEY]).unwrap()));
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let ring = KeyRing::new(KEY).unwrap();
        let t = ring.mint(&claims()).unwrap();
        assert_eq!(ring.verify(&t).unwrap(), claims());
        // Claim names are PascalCase exactly, plus iat.
        let body = t.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        assert_eq!(v["Namespace"], "demo-project-main");
        assert_eq!(v["EnvironmentId"], "42");
        assert_eq!(v["ProjectName"], "demo-project");
        assert_eq!(v["EnvironmentName"], "main");
        assert!(v["iat"].is_number());
        assert!(v.get("exp").is_none());
    }

    #[test]
    fn go_original_token_verifies() {
        // jwt-go's HS256 output: header {"alg":"HS256","typ":"JWT"}, the four
        // claims, no iat and no exp.
        let t = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"demo-project-main","ProjectName":"demo-project"}"#,
            KEY.as_bytes(),
        );
        assert_eq!(KeyRing::new(KEY).unwrap().verify(&t).unwrap(), claims());
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            KeyRing::new(INSECURE_DEFAULT_KEY).unwrap_err(),
            TokenError::KeyTooShort(10)
        );
        assert!(KeyRing::with_previous(KEY, ["short"]).is_err());
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let ring = KeyRing::new(KEY).unwrap();
        let good = ring.mint(&claims()).unwrap();
        let payload = r#"{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"demo-project-main","ProjectName":"demo-project"}"#;

        // alg none, with and without a signature.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(payload)
        );
        assert!(matches!(
            ring.verify(&none),
            Err(TokenError::WrongAlgorithm(_))
        ));
        // HS512 signed with the right key is still refused: the algorithm is pinned.
        let hs512 = {
            let signing_input = format!(
                "{}.{}",
                B64.encode(r#"{"alg":"HS512","typ":"JWT"}"#),
                B64.encode(payload)
            );
            use josekit::jws::{JwsSigner, HS512};
            let key = format!("{KEY}{KEY}");
            let s = HS512.signer_from_bytes(key.as_bytes()).unwrap();
            format!(
                "{signing_input}.{}",
                B64.encode(s.sign(signing_input.as_bytes()).unwrap())
            )
        };
        assert!(ring.verify(&hs512).is_err());
        // RS256 header (algorithm confusion).
        let rs = sign_raw(r#"{"alg":"RS256","typ":"JWT"}"#, payload, KEY.as_bytes());
        assert!(matches!(
            ring.verify(&rs),
            Err(TokenError::WrongAlgorithm(_))
        ));
        // Wrong key.
        let forged = sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, payload, OTHER.as_bytes());
        assert_eq!(ring.verify(&forged), Err(TokenError::Invalid));
        // Tampered payload with the original signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered_body = B64.encode(payload.replace("42", "43"));
        parts[1] = &tampered_body;
        assert_eq!(ring.verify(&parts.join(".")), Err(TokenError::Invalid));
        // Truncated.
        assert!(ring.verify(&good[..good.len() - 5]).is_err());
        assert!(ring.verify(&good[..20]).is_err());
        assert_eq!(ring.verify("   "), Err(TokenError::Missing));
        assert!(ring.verify("not.a.jwt").is_err());
        // Missing claim.
        let partial = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"Namespace":"x","ProjectName":"p","EnvironmentName":"e"}"#,
            KEY.as_bytes(),
        );
        assert_eq!(
            ring.verify(&partial),
            Err(TokenError::MissingClaim("EnvironmentId"))
        );
        // Expired.
        let expired = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"n","ProjectName":"p","exp":1000}"#,
            KEY.as_bytes(),
        );
        assert_eq!(ring.verify(&expired), Err(TokenError::Expired));
    }

    #[test]
    fn previous_keys_verify_until_removed() {
        let old = KeyRing::new(OTHER).unwrap();
        let t = old.mint(&claims()).unwrap();
        let rotating = KeyRing::with_previous(KEY, [OTHER]).unwrap();
        assert_eq!(rotating.verify(&t).unwrap(), claims());
        // New tokens are signed with the new key.
        let fresh = rotating.mint(&claims()).unwrap();
        assert!(KeyRing::new(KEY).unwrap().verify(&fresh).is_ok());
        assert!(old.verify(&fresh).is_err());
        // Once the previous key is dropped, old tokens are refused.
        assert_eq!(
            KeyRing::new(KEY).unwrap().verify(&t),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn cached_verification_gives_the_same_answers() {
        let ring = KeyRing::new(KEY).unwrap();
        let t = ring.mint(&claims()).unwrap();
        assert_eq!(ring.verify(&t).unwrap(), claims());
        assert_eq!(
            ring.verify(&t).unwrap(),
            claims(),
            "second time from the cache"
        );
        // A tampered token is not a cache hit.
        let mut bad = t.clone();
        bad.push('x');
        assert!(ring.verify(&bad).is_err());
        // A ring without the signing key does not share the cache.
        let other = KeyRing::new(OTHER).unwrap();
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        // Expired tokens are refused even after a cached success.
        let soon = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(
                r#"{{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"demo-project-main","ProjectName":"demo-project","exp":{}}}"#,
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 1
            ),
            KEY.as_bytes(),
        );
        assert!(ring.verify(&soon).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(ring.verify(&soon).is_err(), "cached entry honours exp");
    }

    #[test]
    fn debug_and_fingerprint_hide_the_key() {
        let ring = KeyRing::new(KEY).unwrap();
        let dbg = format!("{ring:?}");
        assert!(!dbg.contains(KEY));
        let fp = ring.fingerprint();
        assert_eq!(fp.len(), 12);
        assert_ne!(fp, KeyRing::new(OTHER).unwrap().fingerprint());
    }

    #[test]
    fn a_short_key_from_the_flags_is_refused() {
        let short = crate::settings::KeyArgs {
            token_secret: Some("short-key".into()),
            ..Default::default()
        };
        let err = KeyRing::from_args(&short).err().unwrap().to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
    }
}
