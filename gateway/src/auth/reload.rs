//! Reloading the auth files in place: the password file, the client-id allowlist and the ACL.
//!
//! Owns the swap: each configured file is read and checked whole, then put in force in one
//! step; a file that fails keeps the previous version in force and yields one log line naming
//! the file, the line and the reason. It never drops a client: connections pick up the new
//! ACL at their next check, and a password change applies from the next CONNECT.

use std::sync::Arc;

use super::acl::Acl;
use super::{write, Authenticator, ClientIdAllowlist, PasswordFile};

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The config names no such file.
    NotConfigured,
    /// The new file is in force.
    Reloaded {
        /// Users, client ids or rules it holds.
        entries: usize,
    },
    /// The file is broken; the previous version stays in force.
    Kept {
        /// `file:line: reason`, or why it could not be read.
        error: String,
    },
}

/// What a reload did, file by file (what `holdfast ctl reload` and the web UI show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// `auth.password_file`.
    pub password_file: ReloadOutcome,
    /// `auth.clientid_allowlist`.
    pub clientid_allowlist: ReloadOutcome,
    /// `auth.acl_file`.
    pub acl_file: ReloadOutcome,
}

impl ReloadReport {
    /// True when no file had to be kept.
    pub fn is_ok(&self) -> bool {
        ![
            &self.password_file,
            &self.clientid_allowlist,
            &self.acl_file,
        ]
        .iter()
        .any(|o| matches!(o, ReloadOutcome::Kept { .. }))
    }
}

fn outcome<T>(
    what: &str,
    loaded: Option<Result<T, super::AuthFileError>>,
    count: impl FnOnce(&T) -> usize,
    install: impl FnOnce(T),
) -> ReloadOutcome {
    match loaded {
        None => ReloadOutcome::NotConfigured,
        Some(Ok(value)) => {
            let entries = count(&value);
            install(value);
            tracing::info!(entries, "reloaded the {what}");
            ReloadOutcome::Reloaded { entries }
        }
        Some(Err(e)) => {
            let error = e.to_string();
            tracing::error!(
                "reload of the {what} failed, the previous one stays in force: {error}"
            );
            ReloadOutcome::Kept { error }
        }
    }
}

impl Authenticator {
    /// Re-reads every configured auth file and puts each one that is valid in force; a broken
    /// one keeps its previous version (see the module docs). Blocking file I/O and parsing: a
    /// 10,000-rule ACL takes milliseconds, so call it from a blocking context.
    pub fn reload(&self) -> ReloadReport {
        let sources = &self.sources;
        let password_file = outcome(
            "password file",
            sources
                .password_file
                .as_ref()
                .map(|p| PasswordFile::load(p)),
            |f| f.users().count(),
            |f| write(&self.passwords, Some(Arc::new(f))),
        );
        let clientid_allowlist = outcome(
            "client-id allowlist",
            sources
                .clientid_allowlist
                .as_ref()
                .map(|p| ClientIdAllowlist::load(p)),
            ClientIdAllowlist::len,
            |l| write(&self.allowlist, Some(Arc::new(l))),
        );
        let acl_file = outcome(
            "ACL file",
            sources
                .acl_file
                .as_ref()
                .map(|p| Acl::load(p, sources.nomatch()).map_err(Into::into)),
            Acl::len,
            |acl| self.acl.replace(acl),
        );
        ReloadReport {
            password_file,
            clientid_allowlist,
            acl_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::{Action, ClientIdentity, Permission};
    use crate::auth::{Admitted, AuthDecision};
    use crate::config::AuthConfig;
    use std::fs;

    const ALLOW_T: &str =
        "[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"all\"\ntopics = [\"t\"]\n";

    #[test]
    fn a_reload_swaps_valid_files_and_keeps_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (passwd, acl, ids) = (
            dir.path().join("passwd"),
            dir.path().join("acl.toml"),
            dir.path().join("ids"),
        );
        let mut users = PasswordFile::new();
        users.set("alice", b"one").unwrap();
        users.save(&passwd).unwrap();
        fs::write(&acl, ALLOW_T).unwrap();
        fs::write(&ids, "plc-1\n").unwrap();
        let auth = Authenticator::from_config(&AuthConfig {
            password_file: Some(passwd.clone()),
            clientid_allowlist: Some(ids.clone()),
            acl_file: Some(acl.clone()),
            acl_nomatch: crate::config::AclNomatch::Deny,
            ..AuthConfig::default()
        })
        .unwrap();
        let me = ClientIdentity {
            client_id: "c",
            username: None,
            ip: "127.0.0.1".parse().unwrap(),
        };
        let check = |topic: &str| auth.acl().current().check(&me, Action::Publish, topic);
        assert_eq!(check("t"), Permission::Allow);
        assert_eq!(auth.check("plc-2", None, None), AuthDecision::NotAuthorized);

        // Everything changes and is valid.
        users.set("alice", b"two").unwrap();
        users.save(&passwd).unwrap();
        fs::write(&acl, ALLOW_T.replace("allow", "deny")).unwrap();
        fs::write(&ids, "plc-1\nplc-2\n").unwrap();
        let report = auth.reload();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.acl_file, ReloadOutcome::Reloaded { entries: 1 });
        assert_eq!(report.password_file, ReloadOutcome::Reloaded { entries: 1 });
        assert_eq!(check("t"), Permission::Deny);
        assert_eq!(
            auth.check("x", Some("alice"), Some(b"two")),
            AuthDecision::Allow(Admitted::Password)
        );
        assert_eq!(
            auth.check("plc-2", None, None),
            AuthDecision::Allow(Admitted::AllowedClientId)
        );

        // Broken files: the previous versions stay.
        fs::write(&acl, "[[rules]]\npermission = \"allow\"\nwho = { all = true }\naction = \"publsh\"\ntopics = [\"t\"]\n").unwrap();
        fs::write(&passwd, "alice\n").unwrap();
        fs::remove_file(&ids).unwrap();
        let report = auth.reload();
        assert!(!report.is_ok());
        let ReloadOutcome::Kept { error } = &report.acl_file else {
            panic!("{report:?}");
        };
        assert_eq!(
            error,
            &format!(
                "{}:4: action: \"publsh\" is not publish, subscribe or all",
                acl.display()
            )
        );
        assert!(
            matches!(&report.password_file, ReloadOutcome::Kept { error } if error.contains(":1: "))
        );
        assert!(matches!(
            &report.clientid_allowlist,
            ReloadOutcome::Kept { .. }
        ));
        assert_eq!(check("t"), Permission::Deny);
        assert_eq!(
            auth.check("x", Some("alice"), Some(b"two")),
            AuthDecision::Allow(Admitted::Password)
        );
        assert_eq!(
            auth.check("plc-2", None, None),
            AuthDecision::Allow(Admitted::AllowedClientId)
        );
    }

    #[test]
    fn a_reload_without_files_reports_nothing_configured() {
        let auth = Authenticator::new(true, None);
        let report = auth.reload();
        assert_eq!(report.acl_file, ReloadOutcome::NotConfigured);
        assert_eq!(report.password_file, ReloadOutcome::NotConfigured);
        assert!(report.is_ok());
    }
}
