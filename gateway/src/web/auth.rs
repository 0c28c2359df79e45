//! Who may use the web API: the admin account and its first-boot setup token, login sessions
//! with their CSRF tokens, and API tokens for automation.
//!
//! Owns the credential files under the data directory (`setup-token`, `web/admin` as a
//! password file of one user, `web/tokens.json` with SHA-256 digests of the tokens, never the
//! tokens themselves) and the in-memory session table, bounded. There is no default password:
//! until an admin exists, the only way in is the setup token written at start (mode 0600, as
//! every file the gateway writes). Never answers HTTP itself and never logs a secret.

use crate::auth::PasswordFile;
use crate::udp::lock;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;

/// The one admin account's user name.
pub const ADMIN: &str = "admin";
/// API tokens kept at most.
const MAX_TOKENS: usize = 100;
/// Shortest admin password taken.
pub const MIN_PASSWORD: usize = 10;

/// A fresh random secret: 32 bytes from the OS, hex.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Why the credential files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin file or the token file is not what the gateway wrote.
    #[error("{0}")]
    Corrupt(String),
}

/// Why a setup was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// An admin exists already.
    #[error("the gateway is set up already")]
    Done,
    /// The token is not the one in the data directory.
    #[error("wrong setup token")]
    WrongToken,
    /// The password is shorter than [`MIN_PASSWORD`].
    #[error("the password must have at least {MIN_PASSWORD} characters")]
    WeakPassword,
    /// The admin file could not be written.
    #[error("the admin account could not be saved")]
    Io,
}

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The password is the admin's.
    pub ok: bool,
    /// The admin password was changed from a shell since the last check: sessions end.
    pub changed: bool,
}

/// What an API token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `GET /metrics` only (a Prometheus scraper).
    Metrics,
    /// Every read but the config file (it holds credentials) and the trace files
    /// (monitoring, dashboards).
    Read,
    /// Everything a logged-in admin does, but making or revoking tokens (automation, config
    /// pushes).
    Admin,
}

impl Scope {
    /// The word used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Metrics => "metrics",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Tokens made before scopes existed were admin tokens.
fn admin() -> Scope {
    Scope::Admin
}

/// An API token as listed (never the token itself).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Its id (for revoking).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    #[serde(default = "admin")]
    pub scope: Scope,
    /// When it was made, seconds since the epoch.
    pub created: u64,
    /// SHA-256 of the token, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    digest: String,
}

impl TokenInfo {
    /// The same without the digest, for listing.
    pub fn public(&self) -> TokenInfo {
        TokenInfo {
            digest: String::new(),
            ..self.clone()
        }
    }
}

/// The admin account, the setup token and the API tokens.
#[derive(Debug)]
pub struct Credentials {
    admin_path: PathBuf,
    tokens_path: PathBuf,
    setup_path: PathBuf,
    admin: Mutex<PasswordFile>,
    /// The admin file as last read (to see `holdfast web-passwd` change it).
    admin_bytes: Mutex<Vec<u8>>,
    tokens: Mutex<Vec<TokenInfo>>,
    /// The setup token while no admin exists.
    setup: Mutex<Option<String>>,
}

impl Credentials {
    /// Reads the credential files under `data_dir`; with no admin yet, writes a new setup token
    /// to `{data_dir}/setup-token` and logs where it is.
    pub fn open(data_dir: &Path) -> Result<Credentials, CredentialError> {
        let dir = data_dir.join("web");
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CredentialError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let admin_path = dir.join("admin");
        let tokens_path = dir.join("tokens.json");
        let setup_path = data_dir.join("setup-token");
        let admin = if admin_path.exists() {
            PasswordFile::load(&admin_path).map_err(|e| CredentialError::Corrupt(e.to_string()))?
        } else {
            PasswordFile::new()
        };
        let tokens: Vec<TokenInfo> = match std::fs::read(&tokens_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CredentialError::Corrupt(format!("{}: {e}", tokens_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&tokens_path)(e)),
        };
        let setup = if admin.contains(ADMIN) {
            let _ = std::fs::remove_file(&setup_path);
            None
        } else {
            let token = secret();
            crate::file_replace::replace(&setup_path, format!("{token}\n").as_bytes())
                .map_err(io(&setup_path))?;
            tracing::warn!(
                file = %setup_path.display(),
                "web: no admin account yet; the one-time setup token is in this file (the first visit asks for it and for the admin password)"
            );
            Some(token)
        };
        let admin_bytes = std::fs::read(&admin_path).unwrap_or_default();
        Ok(Credentials {
            admin_path,
            tokens_path,
            setup_path,
            admin: Mutex::new(admin),
            admin_bytes: Mutex::new(admin_bytes),
            tokens: Mutex::new(tokens),
            setup: Mutex::new(setup),
        })
    }

    /// Whether the first visit still has to create the admin account.
    pub fn setup_required(&self) -> bool {
        self.reload_admin();
        lock(&self.setup).is_some()
    }

    /// Creates the admin account with `password`, given the setup token. CPU-heavy (argon2):
    /// call it off the async runtime.
    pub fn setup(&self, token: &str, password: &str) -> Result<(), SetupError> {
        self.reload_admin();
        let mut setup = lock(&self.setup);
        let Some(expected) = setup.as_deref() else {
            return Err(SetupError::Done);
        };
        if !bool::from(expected.as_bytes().ct_eq(token.trim().as_bytes())) {
            return Err(SetupError::WrongToken);
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(SetupError::WeakPassword);
        }
        let mut admin = lock(&self.admin);
        admin
            .set(ADMIN, password.as_bytes())
            .map_err(|_| SetupError::Io)?;
        admin.save(&self.admin_path).map_err(|_| SetupError::Io)?;
        if let Ok(bytes) = std::fs::read(&self.admin_path) {
            *lock(&self.admin_bytes) = bytes;
        }
        *setup = None;
        let _ = std::fs::remove_file(&self.setup_path);
        tracing::info!("web: admin account created; the setup token is spent");
        Ok(())
    }

    /// Whether `password` is the admin's, and whether the admin file changed since it was last
    /// read (`holdfast web-passwd`: the caller ends every session). CPU-heavy (argon2): call it
    /// off the async runtime.
    pub fn verify(&self, password: &str) -> Verdict {
        let changed = self.reload_admin();
        let ok = lock(&self.admin).verify(ADMIN, password.as_bytes());
        Verdict { ok, changed }
    }

    /// Reads the admin file again when it changed on disk; true when a password that was set
    /// changed. An admin that appeared (set from a shell) spends the setup token.
    fn reload_admin(&self) -> bool {
        let Ok(bytes) = std::fs::read(&self.admin_path) else {
            return false;
        };
        let mut seen = lock(&self.admin_bytes);
        if *seen == bytes {
            return false;
        }
        let Ok(fresh) = PasswordFile::load(&self.admin_path) else {
            return false;
        };
        let was_set = !seen.is_empty();
        *seen = bytes;
        if fresh.contains(ADMIN) && lock(&self.setup).take().is_some() {
            let _ = std::fs::remove_file(&self.setup_path);
            tracing::info!("web: an admin password was set from a shell; the setup token is spent");
        }
        *lock(&self.admin) = fresh;
        was_set
    }

    /// Makes an API token named `name`; returns its listing and the token (shown once).
    pub fn create_token(
        &self,
        name: &str,
        scope: Scope,
    ) -> Result<(TokenInfo, String), CredentialError> {
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= MAX_TOKENS {
            return Err(CredentialError::Corrupt(format!(
                "{MAX_TOKENS} API tokens exist; revoke one first"
            )));
        }
        let token = format!("hft_{}", secret());
        let info = TokenInfo {
            id: secret()[..16].to_owned(),
            name: name.to_owned(),
            scope,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            digest: digest(&token),
        };
        tokens.push(info.clone());
        self.save_tokens(&tokens)?;
        Ok((info.public(), token))
    }

    /// The API tokens (without digests).
    pub fn tokens(&self) -> Vec<TokenInfo> {
        lock(&self.tokens).iter().map(TokenInfo::public).collect()
    }

    /// Revokes token `id`; false when there is none.
    pub fn revoke(&self, id: &str) -> Result<bool, CredentialError> {
        let mut tokens = lock(&self.tokens);
        let before = tokens.len();
        tokens.retain(|t| t.id != id);
        if tokens.len() == before {
            return Ok(false);
        }
        self.save_tokens(&tokens)?;
        Ok(true)
    }

    /// The scope of `token` when it is a live API token (compared in constant time with
    /// every digest).
    pub fn check_token(&self, token: &str) -> Option<Scope> {
        let d = digest(token);
        let tokens = lock(&self.tokens);
        let mut found = None;
        for t in tokens.iter() {
            if bool::from(t.digest.as_bytes().ct_eq(d.as_bytes())) {
                found = Some(t.scope);
            }
        }
        found
    }

    fn save_tokens(&self, tokens: &[TokenInfo]) -> Result<(), CredentialError> {
        let bytes = serde_json::to_vec_pretty(tokens)
            .map_err(|e| CredentialError::Corrupt(e.to_string()))?;
        crate::file_replace::replace(&self.tokens_path, &bytes).map_err(|source| {
            CredentialError::Io {
                path: self.tokens_path.display().to_string(),
                source,
            }
        })
    }
}

/// Sets the admin password from a shell (`holdfast web-passwd`), with no setup token: whoever
/// can write the data directory owns the gateway anyway. A running gateway takes it at the
/// next login; sessions already open stay until they end.
pub fn reset_admin(data_dir: &Path, password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        ));
    }
    let dir = data_dir.join("web");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("admin");
    let mut admin = if path.exists() {
        PasswordFile::load(&path).map_err(|e| e.to_string())?
    } else {
        PasswordFile::new()
    };
    admin
        .set(ADMIN, password.as_bytes())
        .map_err(|e| e.to_string())?;
    admin.save(&path).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(data_dir.join("setup-token"));
    Ok(())
}

/// One login session.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// The file the sessions wait in while the gateway restarts on an applied config.
const HANDOVER: &str = "web-sessions.restart";

/// A handover older than this is not taken: a restart takes seconds, and a file a crash left
/// behind must not bring sessions back later.
const HANDOVER_MAX_AGE: Duration = Duration::from_secs(60);

/// One session in the handover file: the SHA-256 of its cookie (never the cookie itself),
/// its CSRF token, and its ages.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Handed {
    key: String,
    csrf: String,
    age_ms: u64,
    idle_ms: u64,
}

/// The login sessions, bounded: one more than `max` ends the oldest. Keyed by the SHA-256 of
/// the cookie, so the table (and its handover file) never holds a cookie that works.
#[derive(Debug)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    idle: Duration,
    lifetime: Duration,
    max: usize,
}

impl Sessions {
    /// Sessions that end after `idle` unused or `lifetime` after login; at most `max`.
    pub fn new(idle: Duration, lifetime: Duration, max: usize) -> Sessions {
        Sessions {
            table: Mutex::new(HashMap::new()),
            idle,
            lifetime,
            max: max.max(1),
        }
    }

    /// Starts a session: its id (the cookie) and its CSRF token.
    pub fn create(&self, now: Instant) -> (String, String) {
        let mut table = lock(&self.table);
        table.retain(|_, s| self.alive(s, now));
        while table.len() >= self.max {
            let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            table.remove(&oldest);
        }
        let (id, csrf) = (secret(), secret());
        table.insert(
            digest(&id),
            Session {
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of live session `id` (touching it), or none.
    pub fn check(&self, id: &str, now: Instant) -> Option<String> {
        let key = digest(id);
        let mut table = lock(&self.table);
        let alive = table.get(&key).is_some_and(|s| self.alive(s, now));
        if !alive {
            table.remove(&key);
            return None;
        }
        let s = table.get_mut(&key)?;
        s.last_used = now;
        Some(s.csrf.clone())
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        lock(&self.table).remove(&digest(id));
    }

    /// Writes the live sessions to `{data_dir}/web-sessions.restart` (mode 0600) for the
    /// gateway that a config restart starts next ([`Sessions::take_over`]): the technician who
    /// applied stays logged in to keep (confirm) the config. Returns how many.
    pub fn hand_over(&self, data_dir: &Path, now: Instant) -> std::io::Result<usize> {
        let handed: Vec<Handed> = lock(&self.table)
            .iter()
            .filter(|(_, s)| self.alive(s, now))
            .map(|(key, s)| Handed {
                key: key.clone(),
                csrf: s.csrf.clone(),
                age_ms: millis(now.saturating_duration_since(s.created)),
                idle_ms: millis(now.saturating_duration_since(s.last_used)),
            })
            .collect();
        let text = serde_json::to_vec(&handed).map_err(std::io::Error::other)?;
        crate::file_replace::replace_with_mode(&data_dir.join(HANDOVER), &text, 0o600)?;
        Ok(handed.len())
    }

    /// Takes the sessions a config restart handed over, if the file is fresh, and removes the
    /// file either way; each keeps its age (its idle time and lifetime go on) and the limits
    /// of this start. Returns how many were taken.
    pub fn take_over(&self, data_dir: &Path, now: Instant) -> usize {
        let path = data_dir.join(HANDOVER);
        let fresh = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < HANDOVER_MAX_AGE);
        let text = std::fs::read(&path);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), "web: cannot remove the sessions' handover file: {e}");
            }
        }
        let Ok(text) = text else { return 0 };
        if !fresh {
            return 0;
        }
        let handed: Vec<Handed> = match serde_json::from_slice(&text) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(file = %path.display(), "web: the sessions' handover file cannot be read ({e}); log in again");
                return 0;
            }
        };
        let mut table = lock(&self.table);
        let mut taken = 0;
        for h in handed.into_iter().take(self.max) {
            let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms));
            let (Some(created), Some(last_used)) = (ago(h.age_ms), ago(h.idle_ms)) else {
                continue;
            };
            let session = Session {
                csrf: h.csrf,
                created,
                last_used,
            };
            if self.alive(&session, now) {
                table.insert(h.key, session);
                taken += 1;
            }
        }
        taken
    }

    /// Ends every session (the admin password changed).
    pub fn end_all(&self) {
        lock(&self.table).clear();
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_used) < self.idle
            && now.saturating_duration_since(s.created) < self.lifetime
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Compares two secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn setup_needs_the_token_once_and_a_real_password() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::open(dir.path()).unwrap();
        assert!(creds.setup_required());
        let token = std::fs::read_to_string(dir.path().join("setup-token")).unwrap();
        assert_eq!(
            creds.setup("nope", "long enough pw"),
            Err(SetupError::WrongToken)
        );
        assert_eq!(creds.setup(&token, "short"), Err(SetupError::WeakPassword));
        assert_eq!(creds.setup(&token, "long enough pw"), Ok(()));
        assert!(
            !dir.path().join("setup-token").exists(),
            "the token is spent"
        );
        assert_eq!(creds.setup(&token, "long enough pw"), Err(SetupError::Done));
        assert!(creds.verify("long enough pw").ok);
        assert!(!creds.verify("long enough pW").ok);
        // A restart finds the admin and writes no new token.
        let again = Credentials::open(dir.path()).unwrap();
        assert!(!again.setup_required());
        assert!(!dir.path().join("setup-token").exists());
        assert!(again.verify("long enough pw").ok);
        // A password set from a shell while running: the next check sees it, and says so.
        reset_admin(dir.path(), "set from a shell").unwrap();
        let v = again.verify("set from a shell");
        assert!(v.ok && v.changed, "{v:?}");
        assert!(!again.verify("set from a shell").changed);
    }

    #[test]
    fn a_password_set_from_a_shell_spends_the_setup_token() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::open(dir.path()).unwrap();
        let token = std::fs::read_to_string(dir.path().join("setup-token")).unwrap();
        reset_admin(dir.path(), "set from a shell").unwrap();
        assert!(!creds.setup_required());
        assert_eq!(
            creds.setup(&token, "the attacker's pw"),
            Err(SetupError::Done)
        );
        assert!(creds.verify("set from a shell").ok);
    }

    #[test]
    fn tokens_are_kept_as_digests_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::open(dir.path()).unwrap();
        let (info, token) = creds.create_token("prometheus", Scope::Metrics).unwrap();
        assert_eq!(creds.check_token(&token), Some(Scope::Metrics));
        assert_eq!(creds.check_token("hft_0000"), None);
        let file = std::fs::read_to_string(dir.path().join("web/tokens.json")).unwrap();
        assert!(!file.contains(&token), "the token itself is never stored");
        let reopened = Credentials::open(dir.path()).unwrap();
        assert_eq!(reopened.check_token(&token), Some(Scope::Metrics));
        assert_eq!(creds.tokens().len(), 1);
        assert!(creds.revoke(&info.id).unwrap());
        assert_eq!(creds.check_token(&token), None);
        assert!(!creds.revoke(&info.id).unwrap());
    }

    #[test]
    fn a_token_from_before_scopes_is_an_admin_token() {
        let old: TokenInfo =
            serde_json::from_str(r#"{"id":"a","name":"b","created":1,"digest":"c"}"#).unwrap();
        assert_eq!(old.scope, Scope::Admin);
    }

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 2);
        let t0 = Instant::now();
        let (a, csrf) = s.create(t0);
        assert_eq!(s.check(&a, t0 + Duration::from_secs(30)), Some(csrf));
        assert!(s.check(&a, t0 + Duration::from_secs(100)).is_none(), "idle");
        let (b, _) = s.create(t0);
        let (c, _) = s.create(t0 + Duration::from_secs(1));
        let (d, _) = s.create(t0 + Duration::from_secs(2));
        assert!(
            s.check(&b, t0 + Duration::from_secs(3)).is_none(),
            "the oldest ended"
        );
        assert!(s.check(&c, t0 + Duration::from_secs(3)).is_some());
        assert!(s.check(&d, t0 + Duration::from_secs(3)).is_some());
        assert!(
            s.check(&c, t0 + Duration::from_secs(700)).is_none(),
            "lifetime"
        );
    }

    #[test]
    fn sessions_are_handed_over_across_a_restart_without_their_cookies() {
        let dir = tempfile::tempdir().unwrap();
        let before = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 4);
        let t0 = Instant::now();
        let (a, csrf) = before.create(t0);
        let (ended, _) = before.create(t0);
        before.end(&ended);
        assert_eq!(before.hand_over(dir.path(), t0).unwrap(), 1);
        let file = std::fs::read_to_string(dir.path().join(HANDOVER)).unwrap();
        assert!(!file.contains(&a), "the cookie itself is never written");
        let mode = std::fs::metadata(dir.path().join(HANDOVER))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let after = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 4);
        assert_eq!(after.take_over(dir.path(), t0), 1);
        assert!(!dir.path().join(HANDOVER).exists(), "taken once");
        assert_eq!(after.check(&a, t0), Some(csrf));
        assert!(after.check(&ended, t0).is_none());
        assert_eq!(after.take_over(dir.path(), t0), 0);

        // A stale file is removed and not taken; a broken one too.
        before.hand_over(dir.path(), t0).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(HANDOVER))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let late = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 4);
        assert_eq!(late.take_over(dir.path(), t0), 0);
        assert!(!dir.path().join(HANDOVER).exists());
        std::fs::write(dir.path().join(HANDOVER), "not json").unwrap();
        assert_eq!(late.take_over(dir.path(), t0), 0);
    }

    #[test]
    fn a_handed_over_session_keeps_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now() + Duration::from_secs(1000);
        let before = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 4);
        let (a, _) = before.create(t0);
        before
            .hand_over(dir.path(), t0 + Duration::from_secs(50))
            .unwrap();
        let after = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 4);
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(after.take_over(dir.path(), t1), 1);
        // 50 s idle before the restart, 15 more after it: past the minute.
        assert!(
            after.check(&a, t1 + Duration::from_secs(15)).is_none(),
            "idle"
        );
    }
}
