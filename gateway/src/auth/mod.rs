//! Who may connect and what they may do: the password file, `holdfast passwd`, the client-id
//! allowlist, JWT, the ACL ([`acl`]), and the broker's [`Authenticator`] that holds them.
//!
//! Owns password hashing and verification (argon2id), the connect-time decision and the
//! reload of the auth files ([`reload`]). It never runs on the async runtime itself:
//! verification is deliberately slow, so the broker calls [`Authenticator::check`] through
//! `spawn_blocking`. It never logs a password, a hash, a token or a JWT secret.

pub mod acl;
mod allowlist;
pub mod jwt;
pub mod lockout;
mod password_file;
pub mod pool;
pub mod reload;

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub use acl::{AclHandle, Permission};
pub use allowlist::ClientIdAllowlist;
pub use password_file::PasswordFile;
pub use pool::{Busy, CheckPool};
pub use reload::{ReloadOutcome, ReloadReport};

use crate::config::{AclNomatch, AuthConfig};
use acl::Acl;
use jwt::{JwtOutcome, JwtVerifier};

/// What can go wrong with the auth files (password file, allowlist, ACL, JWT key) or the
/// `holdfast passwd` command.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The ACL file could not be read or is invalid.
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    /// The client-id allowlist could not be read.
    #[error("cannot read client-id allowlist {}: {source}", path.display())]
    ReadList {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The JWT settings could not be put in force (the public key file, usually).
    #[error("auth.jwt: {0}")]
    Jwt(String),
    /// The password file could not be read (missing, unreadable).
    #[error("cannot read password file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The password file could not be written (directory missing, read-only, disk full).
    #[error("cannot write password file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line of the password file (or the allowlist) is not valid.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the line's text, which may hold a secret).
        reason: String,
    },
    /// The user name cannot be stored in a password file.
    #[error("invalid user name {user:?}: {reason}")]
    InvalidUser {
        /// The rejected name.
        user: String,
        /// Why.
        reason: &'static str,
    },
    /// An empty password was given; it would let anyone who knows the user name in.
    #[error("the password must not be empty")]
    EmptyPassword,
    /// The password and its confirmation typed at the prompt differ.
    #[error("the passwords do not match")]
    PasswordMismatch,
    /// The password could not be read from the terminal or standard input.
    #[error("cannot read the password: {0}")]
    Prompt(#[source] io::Error),
    /// `holdfast passwd remove` named a user the file does not list.
    #[error("no user {user:?} in {}", path.display())]
    NoSuchUser {
        /// The user asked for.
        user: String,
        /// The file.
        path: PathBuf,
    },
    /// argon2 refused to hash (not expected with the default parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A `holdfast passwd` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdCommand {
    /// Add a user or change their password, creating the file if it is missing. The password
    /// is the first line of standard input when that is not a terminal, else typed twice at a
    /// prompt.
    Add {
        /// The user.
        user: String,
        /// The password file.
        file: PathBuf,
    },
    /// Remove a user; an error if they are not listed.
    Remove {
        /// The user.
        user: String,
        /// The password file.
        file: PathBuf,
    },
    /// Print the users, one a line.
    List {
        /// The password file.
        file: PathBuf,
    },
}

/// Runs a `holdfast passwd` subcommand; returns what to print on standard output.
pub fn run_passwd(cmd: PasswdCommand) -> Result<String, AuthFileError> {
    run_passwd_with(cmd, read_password)
}

/// [`run_passwd`] with the password source injected, for tests.
fn run_passwd_with(
    cmd: PasswdCommand,
    password: impl FnOnce() -> Result<Vec<u8>, AuthFileError>,
) -> Result<String, AuthFileError> {
    match cmd {
        PasswdCommand::Add { user, file } => {
            let mut passwords = match PasswordFile::load(&file) {
                Ok(passwords) => passwords,
                Err(AuthFileError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    PasswordFile::new()
                }
                Err(e) => return Err(e),
            };
            // Check the name before asking for a password that would then be thrown away.
            password_file::check_user(&user).map_err(|reason| AuthFileError::InvalidUser {
                user: user.clone(),
                reason,
            })?;
            let existed = passwords.contains(&user);
            passwords.set(&user, &password()?)?;
            passwords.save(&file)?;
            Ok(if existed {
                format!("changed the password of {user:?} in {}\n", file.display())
            } else {
                format!("added {user:?} to {}\n", file.display())
            })
        }
        PasswdCommand::Remove { user, file } => {
            let mut passwords = PasswordFile::load(&file)?;
            if !passwords.remove(&user) {
                return Err(AuthFileError::NoSuchUser { user, path: file });
            }
            passwords.save(&file)?;
            Ok(format!("removed {user:?} from {}\n", file.display()))
        }
        PasswdCommand::List { file } => {
            let passwords = PasswordFile::load(&file)?;
            Ok(passwords.users().map(|u| format!("{u}\n")).collect())
        }
    }
}

/// The new password: the first line of standard input (without its line ending) when that is
/// not a terminal, so scripts can pipe it in; else typed twice at a prompt that does not echo.
pub fn read_password() -> Result<Vec<u8>, AuthFileError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(AuthFileError::Prompt)?;
        let second =
            rpassword::prompt_password("Password again: ").map_err(AuthFileError::Prompt)?;
        if first != second {
            return Err(AuthFileError::PasswordMismatch);
        }
        Ok(first.into_bytes())
    } else {
        let mut line = Vec::new();
        stdin
            .lock()
            .read_until(b'\n', &mut line)
            .map_err(AuthFileError::Prompt)?;
        Ok(first_line(line))
    }
}

/// Strips the trailing `\n` or `\r\n` of a line read from standard input.
fn first_line(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

/// The connect-time decision, mapped by the broker onto CONNACK reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in; how it was let in says whether its CONNECT user name was verified.
    Allow(Admitted),
    /// Wrong user name or password, or an invalid token (MQTT 5: 0x86; 3.1.1: return code 4).
    BadCredentials,
    /// No credentials and anonymous access is off (MQTT 5: 0x87; 3.1.1: return code 5).
    NotAuthorized,
}

/// Which authenticator let a client in. Only a verified user name may drive ACL `user` rules,
/// `%u` templates and a persistent session's ownership: a name that nobody checked is just
/// text the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The password file verified user name and password.
    Password,
    /// The listener verified a client certificate that names the client
    /// (`tls.peer_cert_as_username`).
    Certificate,
    /// A JWT whose `username_claim` equals the user name.
    TokenWithUser,
    /// A JWT without a `username_claim`: the token is valid, the user name is not checked.
    Token,
    /// The client-id allowlist (the user name is not checked).
    AllowedClientId,
    /// Anonymous access (`auth.allow_anonymous`).
    Anonymous,
}

impl Admitted {
    /// True when the CONNECT user name was verified.
    pub fn verified_user(self) -> bool {
        matches!(
            self,
            Admitted::Password | Admitted::Certificate | Admitted::TokenWithUser
        )
    }
}

/// Decides whether a connecting client may in (the authentication chain, in config order:
/// password file, client-id allowlist, JWT, then anonymous), and holds the ACL that decides
/// what it may do once in. The files are swapped whole by [`Authenticator::reload`].
#[derive(Debug)]
pub struct Authenticator {
    /// `auth.allow_anonymous`: clients without a user name, and clients no authenticator of
    /// the chain knows.
    allow_anonymous: bool,
    /// Where the reloadable files come from.
    sources: Sources,
    /// The loaded password file, when `auth.password_file` is set.
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    /// The loaded client-id allowlist, when `auth.clientid_allowlist` is set.
    allowlist: RwLock<Option<Arc<ClientIdAllowlist>>>,
    /// JWT verification, when `auth.jwt` is set.
    jwt: Option<JwtVerifier>,
    /// The ACL in force.
    acl: AclHandle,
}

/// The files an [`Authenticator`] (re)loads.
#[derive(Debug, Clone, Default)]
struct Sources {
    password_file: Option<PathBuf>,
    clientid_allowlist: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    acl_nomatch: Option<Permission>,
}

impl Sources {
    fn nomatch(&self) -> Permission {
        self.acl_nomatch.unwrap_or(Permission::Allow)
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Authenticator {
    /// Builds the authenticator, loading every configured file; a missing or malformed file
    /// is an error (fail at start-up, not at the first login).
    pub fn from_config(cfg: &AuthConfig) -> Result<Authenticator, AuthFileError> {
        let sources = Sources {
            password_file: cfg.password_file.clone(),
            clientid_allowlist: cfg.clientid_allowlist.clone(),
            acl_file: cfg.acl_file.clone(),
            acl_nomatch: Some(match cfg.acl_nomatch {
                AclNomatch::Allow => Permission::Allow,
                AclNomatch::Deny => Permission::Deny,
            }),
        };
        let passwords = match &sources.password_file {
            Some(path) => Some(PasswordFile::load(path)?),
            None => None,
        };
        let allowlist = match &sources.clientid_allowlist {
            Some(path) => Some(Arc::new(ClientIdAllowlist::load(path)?)),
            None => None,
        };
        let acl = match &sources.acl_file {
            Some(path) => Acl::load(path, sources.nomatch())?,
            None => Acl::empty(sources.nomatch()),
        };
        let jwt = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::from_config(j)?),
            None => None,
        };
        let mut auth = Authenticator::new(cfg.allow_anonymous, passwords);
        auth.sources = sources;
        auth.allowlist = RwLock::new(allowlist);
        auth.jwt = jwt;
        auth.acl = AclHandle::new(acl);
        Ok(auth)
    }

    /// An authenticator over an already loaded password file, without ACL rules (tests).
    pub fn new(allow_anonymous: bool, passwords: Option<PasswordFile>) -> Authenticator {
        Authenticator {
            allow_anonymous,
            sources: Sources::default(),
            passwords: RwLock::new(passwords.map(Arc::new)),
            allowlist: RwLock::new(None),
            jwt: None,
            acl: AclHandle::new(Acl::empty(Permission::Allow)),
        }
    }

    /// Decides on a CONNECT's credentials, asking each configured authenticator in turn;
    /// one that does not know the client passes it on (EMQX's "ignore"):
    /// 1. password file: a user it lists is `Allow` when the password verifies, else
    ///    `BadCredentials` (also when no password was sent), and the chain stops;
    /// 2. client-id allowlist: a listed client id is `Allow`;
    /// 3. JWT: a password that is a JWT is `Allow` when its signature, algorithm, `exp` (and
    ///    `username_claim`) check out, else `BadCredentials`;
    /// 4. nobody knew the client: `Allow` when anonymous access is on, as EMQX does; else
    ///    `NotAuthorized` without a user name, `BadCredentials` with one (after the same
    ///    argon2 work as a wrong password, so timing does not reveal which users exist).
    ///
    /// CPU- and memory-heavy when a password is verified (one argon2id verification,
    /// ~19 MiB): call it in `spawn_blocking`, and bound how many run at once.
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision {
        let passwords = read(&self.passwords);
        if let (Some(user), Some(file)) = (username, &passwords) {
            if file.contains(user) {
                return match password {
                    Some(password) if file.verify(user, password) => {
                        AuthDecision::Allow(Admitted::Password)
                    }
                    _ => AuthDecision::BadCredentials,
                };
            }
        }
        if read(&self.allowlist).is_some_and(|l| l.contains(client_id)) {
            return AuthDecision::Allow(Admitted::AllowedClientId);
        }
        if let (Some(jwt), Some(token)) = (&self.jwt, password) {
            match jwt.verify(token, username) {
                JwtOutcome::Valid if jwt.checks_username() => {
                    return AuthDecision::Allow(Admitted::TokenWithUser)
                }
                JwtOutcome::Valid => return AuthDecision::Allow(Admitted::Token),
                JwtOutcome::Invalid(why) => {
                    tracing::debug!(client_id, "JWT refused: {why}");
                    return AuthDecision::BadCredentials;
                }
                JwtOutcome::NotAToken => {}
            }
        }
        if self.allow_anonymous {
            return AuthDecision::Allow(Admitted::Anonymous);
        }
        let Some(user) = username else {
            return AuthDecision::NotAuthorized;
        };
        if let (Some(file), Some(password)) = (&passwords, password) {
            // Unknown user: spend the time a wrong password would, then refuse.
            let _ = file.verify(user, password);
        }
        AuthDecision::BadCredentials
    }

    /// Whether the password file in force lists `user`.
    pub fn password_file_lists(&self, user: &str) -> bool {
        read(&self.passwords).is_some_and(|f| f.contains(user))
    }

    /// Whether anonymous access is on (the start-up log warns loudly when it is).
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The ACL in force (connections check publishes and subscriptions against it).
    pub fn acl(&self) -> &AclHandle {
        &self.acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn file_with(users: &[(&str, &str)]) -> PasswordFile {
        let mut file = PasswordFile::new();
        for (user, password) in users {
            file.set(user, password.as_bytes()).unwrap();
        }
        file
    }

    #[test]
    fn a_listed_user_with_the_right_password_is_allowed_and_a_wrong_one_is_refused() {
        let auth = Authenticator::new(false, Some(file_with(&[("alice", "pw")])));
        assert_eq!(
            auth.check("c", Some("alice"), Some(b"pw")),
            AuthDecision::Allow(Admitted::Password)
        );
        assert_eq!(
            auth.check("c", Some("alice"), Some(b"nope")),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            auth.check("c", Some("alice"), None),
            AuthDecision::BadCredentials
        );
    }

    #[test]
    fn a_listed_user_with_a_wrong_password_is_refused_even_when_anonymous_is_allowed() {
        let auth = Authenticator::new(true, Some(file_with(&[("alice", "pw")])));
        assert_eq!(
            auth.check("c", Some("alice"), Some(b"nope")),
            AuthDecision::BadCredentials
        );
    }

    #[test]
    fn no_user_name_is_allowed_only_when_anonymous_access_is_on() {
        let closed = Authenticator::new(false, Some(file_with(&[("alice", "pw")])));
        assert_eq!(closed.check("c", None, None), AuthDecision::NotAuthorized);
        assert_eq!(
            closed.check("c", None, Some(b"pw")),
            AuthDecision::NotAuthorized
        );
        let open = Authenticator::new(true, None);
        assert_eq!(
            open.check("c", None, None),
            AuthDecision::Allow(Admitted::Anonymous)
        );
        assert!(open.allows_anonymous());
    }

    #[test]
    fn an_unknown_user_is_refused_unless_anonymous_access_is_on_as_in_emqx() {
        let closed = Authenticator::new(false, Some(file_with(&[("alice", "pw")])));
        assert_eq!(
            closed.check("c", Some("mallory"), Some(b"pw")),
            AuthDecision::BadCredentials
        );
        let no_file = Authenticator::new(false, None);
        assert_eq!(
            no_file.check("c", Some("alice"), Some(b"pw")),
            AuthDecision::BadCredentials
        );
        let open = Authenticator::new(true, Some(file_with(&[("alice", "pw")])));
        // Let in, but as anonymous: the name "mallory" was not verified by anyone.
        assert_eq!(
            open.check("c", Some("mallory"), Some(b"x")),
            AuthDecision::Allow(Admitted::Anonymous)
        );
        assert_eq!(
            open.check("c", Some("mallory"), None),
            AuthDecision::Allow(Admitted::Anonymous)
        );
        assert!(!Admitted::Anonymous.verified_user() && Admitted::Password.verified_user());
    }

    #[test]
    fn from_config_loads_the_password_file_and_fails_when_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        file_with(&[("alice", "pw")]).save(&path).unwrap();
        let auth = Authenticator::from_config(&AuthConfig {
            allow_anonymous: false,
            password_file: Some(path),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(
            auth.check("c", Some("alice"), Some(b"pw")),
            AuthDecision::Allow(Admitted::Password)
        );
        let missing = Authenticator::from_config(&AuthConfig {
            allow_anonymous: false,
            password_file: Some(dir.path().join("nope")),
            ..AuthConfig::default()
        });
        assert!(matches!(missing, Err(AuthFileError::Read { .. })));
        let none = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(none.check("c", None, None), AuthDecision::NotAuthorized);
    }

    #[test]
    fn passwd_add_creates_the_file_then_changes_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let add = |user: &str, pw: &'static [u8]| {
            run_passwd_with(
                PasswdCommand::Add {
                    user: user.to_owned(),
                    file: file.clone(),
                },
                || Ok(pw.to_vec()),
            )
        };
        let out = add("alice", b"one").unwrap();
        assert_eq!(out, format!("added \"alice\" to {}\n", file.display()));
        let out = add("alice", b"two").unwrap();
        assert!(
            out.starts_with("changed the password of \"alice\""),
            "{out}"
        );
        let loaded = PasswordFile::load(&file).unwrap();
        assert!(loaded.verify("alice", b"two"));
        assert!(!loaded.verify("alice", b"one"));
    }

    #[test]
    fn passwd_add_checks_the_user_name_before_asking_for_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let result = run_passwd_with(
            PasswdCommand::Add {
                user: "a:b".to_owned(),
                file: dir.path().join("passwd"),
            },
            || panic!("asked for a password for an invalid user"),
        );
        assert!(matches!(result, Err(AuthFileError::InvalidUser { .. })));
        assert!(!dir.path().join("passwd").exists());
    }

    #[test]
    fn passwd_add_refuses_an_empty_password_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let result = run_passwd_with(
            PasswdCommand::Add {
                user: "alice".to_owned(),
                file: file.clone(),
            },
            || Ok(Vec::new()),
        );
        assert!(matches!(result, Err(AuthFileError::EmptyPassword)));
        assert!(!file.exists());
    }

    #[test]
    fn passwd_list_and_remove_work_on_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        file_with(&[("alice", "a"), ("bob", "b")])
            .save(&file)
            .unwrap();
        let list = || run_passwd(PasswdCommand::List { file: file.clone() });
        assert_eq!(list().unwrap(), "alice\nbob\n");
        let out = run_passwd(PasswdCommand::Remove {
            user: "alice".to_owned(),
            file: file.clone(),
        })
        .unwrap();
        assert_eq!(out, format!("removed \"alice\" from {}\n", file.display()));
        assert_eq!(list().unwrap(), "bob\n");
        let missing = run_passwd(PasswdCommand::Remove {
            user: "alice".to_owned(),
            file: file.clone(),
        });
        assert!(matches!(missing, Err(AuthFileError::NoSuchUser { .. })));
    }

    #[test]
    fn passwd_list_of_a_missing_or_malformed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let list = || run_passwd(PasswdCommand::List { file: file.clone() });
        assert!(matches!(list(), Err(AuthFileError::Read { .. })));
        fs::write(&file, "alice\n").unwrap();
        assert!(matches!(
            list(),
            Err(AuthFileError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn a_piped_password_is_its_first_line_without_the_line_ending() {
        assert_eq!(first_line(b"secret\n".to_vec()), b"secret");
        assert_eq!(first_line(b"secret\r\n".to_vec()), b"secret");
        assert_eq!(first_line(b"secret".to_vec()), b"secret");
        assert_eq!(first_line(b"sp ace \n".to_vec()), b"sp ace ");
    }
}
