//! Client tokens (HS256 JWT) and what they allow.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::{Channel, NameError, UserId};

/// Why a token was refused (401) or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid token: sub {0}")]
    BadSubject(NameError),
    #[error("invalid token: expired")]
    Expired,
    #[error("invalid token: exp is past the year 9999")]
    ExpOutOfRange,
    #[error(
        "invalid token: info is over {} bytes",
        crate::presence::MAX_INFO_BYTES
    )]
    InfoTooLarge,
}

/// The last second of the year 9999: a later `exp` is no time any clock here can reach (and
/// one past 2^63 would overflow one).
pub const MAX_EXP: u64 = 253_402_300_799;

/// The claims of a client token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Channels whose presence this client may see (same patterns as `channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<String>>,
    /// Public JSON about the user that others see in presence (at most 512 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// Who a verified client is and which channels it may subscribe to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub permissions: Permissions,
    /// The `info` claim, as JSON text.
    pub info: Option<std::sync::Arc<str>>,
    /// The token's `exp` (unix seconds): the connection ends then unless refreshed.
    pub exp: Option<u64>,
}

/// The `channels` and `presence` claims: exact names, and prefixes for entries ending in `*`.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    patterns: Box<[Box<str>]>,
    presence: Box<[Box<str>]>,
}

fn patterns(claim: &[String]) -> Box<[Box<str>]> {
    claim.iter().map(|s| s.as_str().into()).collect()
}

fn matches(patterns: &[Box<str>], channel: &Channel) -> bool {
    let name = channel.as_str();
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => **p == *name,
    })
}

impl Permissions {
    pub fn new(claim: &[String]) -> Self {
        Permissions {
            patterns: patterns(claim),
            presence: Box::default(),
        }
    }

    pub fn allows(&self, channel: &Channel) -> bool {
        matches(&self.patterns, channel)
    }

    /// May see who is in `channel`.
    pub fn sees_presence(&self, channel: &Channel) -> bool {
        matches(&self.presence, channel)
    }
}

/// Signs and verifies client tokens with one HS256 secret.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    /// # Errors
    /// When signing and verifying a sample token fails: a broken crypto backend shows at start,
    /// not as a 500 on the first client.
    pub fn new(secret: &str) -> Result<Self, Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["sub"]);
        // An expired token is refused at once: no clock-skew grace.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        let keys = TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        };
        let probe = keys.issue(&Claims {
            sub: "self-test".into(),
            ..Claims::default()
        })?;
        keys.verify(&probe)?;
        Ok(keys)
    }

    pub fn issue(&self, claims: &Claims) -> Result<String, Error> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// # Errors
    /// Bad signature, another `alg`, expired, no `sub`, or a `sub` that is not a valid user id.
    pub fn verify(&self, token: &str) -> Result<Identity, Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        // jsonwebtoken lets `exp == now` pass; a token is valid strictly before its `exp`.
        if data
            .claims
            .exp
            .is_some_and(|exp| exp <= jsonwebtoken::get_current_timestamp())
        {
            return Err(Error::Expired);
        }
        if data.claims.exp.is_some_and(|exp| exp > MAX_EXP) {
            return Err(Error::ExpOutOfRange);
        }
        let user = UserId::new(&data.claims.sub).map_err(Error::BadSubject)?;
        let mut permissions = Permissions::new(data.claims.channels.as_deref().unwrap_or_default());
        permissions.presence = patterns(data.claims.presence.as_deref().unwrap_or_default());
        let info = match data.claims.info {
            Some(info) if info.get().len() > crate::presence::MAX_INFO_BYTES => {
                return Err(Error::InfoTooLarge)
            }
            info => info.map(|i| i.get().into()),
        };
        Ok(Identity {
            user,
            permissions,
            info,
            exp: data.claims.exp,
        })
    }
}

/// Constant-time comparison, so the API key cannot be guessed byte by byte from timings.
pub fn keys_match(given: &[u8], expected: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(given, expected).into()
}

/// The credentials of an `Authorization: Bearer <credentials>` value; the scheme is matched
/// case-insensitively (RFC 7235).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Tokens minted by `fanfare token` and the startup banner.
pub fn claims(sub: &str, channels: Option<Vec<String>>, ttl_secs: Option<u64>) -> Claims {
    Claims {
        sub: sub.to_string(),
        exp: ttl_secs.map(|t| jsonwebtoken::get_current_timestamp() + t),
        channels,
        ..Claims::default()
    }
}

/// Distinct entries of a comma-separated channel list, as `--channels a,b*` gives it.
pub fn parse_channel_list(list: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_match_exact_and_prefix() {
        let p = Permissions::new(&["news".into(), "room:*".into()]);
        let ch = |s| Channel::new(s).unwrap();
        assert!(p.allows(&ch("news")));
        assert!(!p.allows(&ch("news2")));
        assert!(p.allows(&ch("room:1")));
        assert!(p.allows(&ch("room:")));
        assert!(!p.allows(&ch("room")));
        assert!(!Permissions::default().allows(&ch("news")));
    }

    #[test]
    fn verify_roundtrip_and_refusals() {
        let keys = TokenKeys::new("s3cret").unwrap();
        let t = keys.issue(&claims("42", None, Some(60))).unwrap();
        assert_eq!(keys.verify(&t).unwrap().user.as_str(), "42");
        let other = TokenKeys::new("other").unwrap();
        assert!(other.verify(&t).is_err());
        let expired = keys
            .issue(&Claims {
                sub: "1".into(),
                exp: Some(1),
                ..Claims::default()
            })
            .unwrap();
        assert!(keys.verify(&expired).is_err());
        let empty = keys.issue(&claims("", None, None)).unwrap();
        assert!(matches!(keys.verify(&empty), Err(Error::BadSubject(_))));
    }

    #[test]
    fn an_exp_no_clock_reaches_is_refused() {
        let keys = TokenKeys::new("s").unwrap();
        for exp in [MAX_EXP + 1, 1 << 63, u64::MAX] {
            let token = keys
                .issue(&Claims {
                    sub: "u".into(),
                    exp: Some(exp),
                    ..Claims::default()
                })
                .unwrap();
            assert!(
                matches!(keys.verify(&token), Err(Error::ExpOutOfRange)),
                "{exp}"
            );
        }
        let far = Claims {
            sub: "u".into(),
            exp: Some(MAX_EXP),
            ..Claims::default()
        };
        assert!(keys.verify(&keys.issue(&far).unwrap()).is_ok());
    }

    #[test]
    fn expiry_is_strict_and_nbf_is_honoured() {
        let keys = TokenKeys::new("s").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let at_now = keys
            .issue(&Claims {
                sub: "1".into(),
                exp: Some(now),
                ..Claims::default()
            })
            .unwrap();
        assert!(matches!(keys.verify(&at_now), Err(Error::Expired)));
        #[derive(Serialize)]
        struct WithNbf {
            sub: &'static str,
            nbf: u64,
        }
        let header = Header::new(Algorithm::HS256);
        let key = EncodingKey::from_secret(b"s");
        let later = jsonwebtoken::encode(
            &header,
            &WithNbf {
                sub: "1",
                nbf: now + 60,
            },
            &key,
        );
        assert!(keys.verify(&later.unwrap()).is_err());
        let earlier = jsonwebtoken::encode(
            &header,
            &WithNbf {
                sub: "1",
                nbf: now - 1,
            },
            &key,
        );
        assert!(keys.verify(&earlier.unwrap()).is_ok());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn key_comparison() {
        assert!(keys_match(b"abc", b"abc"));
        assert!(!keys_match(b"abd", b"abc"));
        assert!(!keys_match(b"ab", b"abc"));
        assert!(!keys_match(b"abcd", b"abc"));
        assert!(!keys_match(b"", b"abc"));
    }
}
