//! JWT authentication: a token in the CONNECT password field (`auth.jwt`).
//!
//! Owns loading the keys (an HMAC secret, a PEM public key) and verifying a token: its
//! algorithm must be one the config lists, its signature must verify with the key of that
//! algorithm's family (so an RS256 public key can never be used as an HS256 secret), `exp`
//! must be present and in the future (`nbf`, when present, in the past; 60 s leeway for
//! device clocks, jsonwebtoken's default), and the optional `username_claim` must equal the
//! CONNECT user name. It never logs a token or the secret, and does no I/O after start-up.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::fmt;
use std::str::FromStr;

use super::AuthFileError;
use crate::config::JwtConfig;

/// What a password says as a JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtOutcome {
    /// A token that checks out.
    Valid,
    /// A token that does not; the reason is for debug logs only.
    Invalid(String),
    /// Not a JWT at all (a plain password): the next authenticator decides.
    NotAToken,
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    ed: Option<DecodingKey>,
    username_claim: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime: Option<std::time::Duration>,
    /// Accept tokens without the `exp`/`nbf` checks while the clock is not synchronized.
    accept_when_unsynchronized: bool,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms)
            .field("username_claim", &self.username_claim)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
    }
}

impl JwtVerifier {
    /// Loads the keys `cfg` names. A public key that is not of the kind a listed algorithm
    /// needs is an error naming the file.
    pub fn from_config(cfg: &JwtConfig) -> Result<JwtVerifier, AuthFileError> {
        let mut algorithms = Vec::new();
        for name in &cfg.algorithms {
            let alg = Algorithm::from_str(name)
                .map_err(|_| AuthFileError::Jwt(format!("unknown algorithm {name:?}")))?;
            algorithms.push(alg);
        }
        let needs = |f: Family| algorithms.iter().any(|&a| family(a) == f);
        let hmac = match (&cfg.secret, needs(Family::Hmac)) {
            (Some(secret), true) => Some(DecodingKey::from_secret(secret.as_bytes())),
            (None, true) => {
                return Err(AuthFileError::Jwt(
                    "an HS algorithm is listed but no secret is set".to_owned(),
                ))
            }
            _ => None,
        };
        let pem = match &cfg.public_key {
            Some(path) if needs(Family::Rsa) || needs(Family::Ec) || needs(Family::Ed) => Some((
                path,
                std::fs::read(path).map_err(|e| {
                    AuthFileError::Jwt(format!("cannot read public_key {}: {e}", path.display()))
                })?,
            )),
            _ => None,
        };
        let load =
            |f: Family,
             kind: &str,
             parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
                if !needs(f) {
                    return Ok(None);
                }
                let Some((path, bytes)) = &pem else {
                    return Err(AuthFileError::Jwt(format!(
                        "a {kind} algorithm is listed but no public_key is set"
                    )));
                };
                parse(bytes).map(Some).map_err(|e| {
                    AuthFileError::Jwt(format!(
                        "public_key {}: not a {kind} public key in PEM ({e})",
                        path.display()
                    ))
                })
            };
        Ok(JwtVerifier {
            rsa: load(Family::Rsa, "RSA", DecodingKey::from_rsa_pem)?,
            ec: load(Family::Ec, "EC", DecodingKey::from_ec_pem)?,
            ed: load(Family::Ed, "Ed25519", DecodingKey::from_ed_pem)?,
            hmac,
            algorithms,
            username_claim: cfg.username_claim.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            max_lifetime: cfg.max_lifetime,
            accept_when_unsynchronized: cfg.accept_when_unsynchronized,
        })
    }

    /// Checks `password` as a token for a client connecting as `username`.
    pub fn verify(&self, password: &[u8], username: Option<&str>) -> JwtOutcome {
        let Ok(token) = std::str::from_utf8(password) else {
            return JwtOutcome::NotAToken;
        };
        // A JWS compact token: three base64url parts; anything else is someone's password.
        if token.split('.').count() != 3 {
            return JwtOutcome::NotAToken;
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return JwtOutcome::NotAToken,
        };
        if !self.algorithms.contains(&header.alg) {
            return JwtOutcome::Invalid(format!("algorithm {:?} is not accepted", header.alg));
        }
        let key = match family(header.alg) {
            Family::Hmac => &self.hmac,
            Family::Rsa => &self.rsa,
            Family::Ec => &self.ec,
            Family::Ed => &self.ed,
        };
        let Some(key) = key else {
            return JwtOutcome::Invalid("no key for this algorithm".to_owned());
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let claims = match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
            Ok(data) => data.claims,
            // A board without a real-time clock reads 1970 (or its image's date) until time
            // sync: `exp`/`nbf` then say nothing about the token.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature
                ) && !crate::clock::synchronized() =>
            {
                if !self.accept_when_unsynchronized {
                    return JwtOutcome::Invalid(format!(
                        "{e} by this gateway's clock, which reads {} and is not synchronized (auth.jwt.unsynchronized_clock = \"refuse\"; \"accept\" skips exp/nbf until it is)",
                        crate::clock::iso(crate::clock::real_now_ms())
                    ));
                }
                let mut untimed = validation.clone();
                untimed.validate_exp = false;
                untimed.validate_nbf = false;
                match jsonwebtoken::decode::<serde_json::Value>(token, key, &untimed) {
                    Ok(data) => data.claims,
                    Err(e) => return JwtOutcome::Invalid(e.to_string()),
                }
            }
            Err(e) => return JwtOutcome::Invalid(e.to_string()),
        };
        if let Some(max) = self.max_lifetime {
            let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
            let from = claims
                .get("iat")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_else(|| crate::clock::real_now_ms() / 1000);
            let lifetime = exp.map(|e| e.saturating_sub(from));
            if lifetime.is_none_or(|l| l > max.as_secs()) {
                return JwtOutcome::Invalid(format!(
                    "token lifetime {lifetime:?} s is longer than max_lifetime ({} s)",
                    max.as_secs()
                ));
            }
        }
        if let Some(claim) = &self.username_claim {
            let value = claims.get(claim).and_then(serde_json::Value::as_str);
            if value.is_none() || value != username {
                return JwtOutcome::Invalid(format!(
                    "claim {claim:?} does not match the user name"
                ));
            }
        }
        JwtOutcome::Valid
    }

    /// True when a valid token also proves the user name (`username_claim` is set).
    pub fn checks_username(&self) -> bool {
        self.username_claim.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn hs(algorithms: &[&str], claim: Option<&str>) -> JwtVerifier {
        JwtVerifier::from_config(&JwtConfig {
            secret: Some("s3cret".to_owned()),
            public_key: None,
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            username_claim: claim.map(str::to_owned),
            issuer: None,
            audience: None,
            max_lifetime: None,
            accept_when_unsynchronized: false,
        })
        .unwrap()
    }

    fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> Vec<u8> {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
        .into_bytes()
    }

    #[test]
    fn a_signed_unexpired_token_is_valid_and_an_expired_or_forged_one_is_not() {
        let v = hs(&["HS256"], None);
        let good = token(Algorithm::HS256, "s3cret", json!({ "exp": now() + 600 }));
        assert_eq!(v.verify(&good, Some("any")), JwtOutcome::Valid);
        assert_eq!(v.verify(&good, None), JwtOutcome::Valid);
        let expired = token(Algorithm::HS256, "s3cret", json!({ "exp": now() - 3600 }));
        assert!(
            matches!(v.verify(&expired, None), JwtOutcome::Invalid(e) if e.contains("Expired"))
        );
        let forged = token(Algorithm::HS256, "guess", json!({ "exp": now() + 600 }));
        assert!(
            matches!(v.verify(&forged, None), JwtOutcome::Invalid(e) if e.contains("Signature"))
        );
        let no_exp = token(Algorithm::HS256, "s3cret", json!({ "sub": "a" }));
        assert!(matches!(v.verify(&no_exp, None), JwtOutcome::Invalid(_)));
        let not_yet = token(
            Algorithm::HS256,
            "s3cret",
            json!({ "exp": now() + 7200, "nbf": now() + 3600 }),
        );
        assert!(matches!(v.verify(&not_yet, None), JwtOutcome::Invalid(_)));
    }

    #[test]
    fn an_algorithm_the_config_does_not_list_is_refused() {
        let v = hs(&["HS256"], None);
        let t = token(Algorithm::HS512, "s3cret", json!({ "exp": now() + 600 }));
        assert!(matches!(v.verify(&t, None), JwtOutcome::Invalid(e) if e.contains("not accepted")));
        // RS256 listed without a key would fail at load; with HS only, an RS token is refused.
        let header_only = b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
        assert!(matches!(
            v.verify(header_only, None),
            JwtOutcome::Invalid(_)
        ));
    }

    #[test]
    fn a_plain_password_is_not_a_token() {
        let v = hs(&["HS256"], None);
        for p in [&b"hunter2"[..], b"a.b.c", b"\xff\xfe", b""] {
            assert_eq!(v.verify(p, None), JwtOutcome::NotAToken, "{p:?}");
        }
    }

    #[test]
    fn the_username_claim_must_equal_the_user_name() {
        let v = hs(&["HS256"], Some("sub"));
        let t = token(
            Algorithm::HS256,
            "s3cret",
            json!({ "exp": now() + 600, "sub": "dev-1" }),
        );
        assert_eq!(v.verify(&t, Some("dev-1")), JwtOutcome::Valid);
        assert!(matches!(
            v.verify(&t, Some("dev-2")),
            JwtOutcome::Invalid(_)
        ));
        assert!(matches!(v.verify(&t, None), JwtOutcome::Invalid(_)));
    }

    #[test]
    fn a_public_key_of_the_wrong_kind_or_missing_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(
            &path,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let cfg = |alg: &str, key: Option<std::path::PathBuf>| JwtConfig {
            secret: None,
            public_key: key,
            algorithms: vec![alg.to_owned()],
            username_claim: None,
            issuer: None,
            audience: None,
            max_lifetime: None,
            accept_when_unsynchronized: false,
        };
        let err = JwtVerifier::from_config(&cfg("RS256", Some(path.clone()))).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        let err =
            JwtVerifier::from_config(&cfg("ES256", Some(dir.path().join("nope")))).unwrap_err();
        assert!(err.to_string().contains("cannot read public_key"), "{err}");
        let err = JwtVerifier::from_config(&cfg("ES256", None)).unwrap_err();
        assert!(err.to_string().contains("no public_key"), "{err}");
    }

    #[test]
    fn issuer_audience_and_max_lifetime_are_enforced_when_set() {
        let v = JwtVerifier::from_config(&JwtConfig {
            secret: Some("s3cret".to_owned()),
            public_key: None,
            algorithms: vec!["HS256".to_owned()],
            username_claim: None,
            issuer: Some("plant-idp".to_owned()),
            audience: Some("holdfast".to_owned()),
            max_lifetime: Some(std::time::Duration::from_secs(3600)),
            accept_when_unsynchronized: false,
        })
        .unwrap();
        let t = |claims: serde_json::Value| token(Algorithm::HS256, "s3cret", claims);
        let good =
            json!({ "exp": now() + 600, "iat": now(), "iss": "plant-idp", "aud": "holdfast" });
        assert_eq!(v.verify(&t(good), None), JwtOutcome::Valid);
        for bad in [
            json!({ "exp": now() + 600, "iss": "other", "aud": "holdfast" }),
            json!({ "exp": now() + 600, "iss": "plant-idp", "aud": "someone-else" }),
            json!({ "exp": now() + 600, "iss": "plant-idp" }),
            json!({ "exp": now() + 86_400 * 365, "iat": now(), "iss": "plant-idp", "aud": "holdfast" }),
            json!({ "exp": now() + 86_400, "iss": "plant-idp", "aud": "holdfast" }),
        ] {
            assert!(
                matches!(v.verify(&t(bad.clone()), None), JwtOutcome::Invalid(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn with_an_unsynchronized_clock_exp_and_nbf_follow_the_configured_rule() {
        crate::clock::refresh(crate::clock::ClockTrust::Unreliable);
        let expired = token(Algorithm::HS256, "s3cret", json!({ "exp": now() - 3600 }));
        let early = token(
            Algorithm::HS256,
            "s3cret",
            json!({ "exp": now() + 7200, "nbf": now() + 3600 }),
        );
        // "refuse" (the default): refused, saying it is the clock.
        let v = hs(&["HS256"], None);
        match v.verify(&expired, None) {
            JwtOutcome::Invalid(e) => assert!(e.contains("is not synchronized"), "{e}"),
            other => panic!("{other:?}"),
        }
        // "accept": exp and nbf are skipped, nothing else is.
        let mut accepting = hs(&["HS256"], None);
        accepting.accept_when_unsynchronized = true;
        assert_eq!(accepting.verify(&expired, None), JwtOutcome::Valid);
        assert_eq!(accepting.verify(&early, None), JwtOutcome::Valid);
        let forged = token(Algorithm::HS256, "guess", json!({ "exp": now() - 3600 }));
        assert!(matches!(
            accepting.verify(&forged, None),
            JwtOutcome::Invalid(_)
        ));
    }
}
