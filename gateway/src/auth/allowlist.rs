//! The client-id allowlist: a file of client ids, one a line, that may connect without
//! credentials (`auth.clientid_allowlist`).
//!
//! Owns parsing that file (`#` comments and blank lines allowed, surrounding whitespace
//! trimmed) and the lookup. It never treats a client id as a secret in its docs or logs: it is
//! an authorisation of known devices on a trusted network, to pair with an ACL.

use std::collections::HashSet;
use std::path::Path;

use super::AuthFileError;

/// The parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct ClientIdAllowlist {
    ids: HashSet<Box<str>>,
}

impl ClientIdAllowlist {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<ClientIdAllowlist, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::ReadList {
            path: path.to_owned(),
            source,
        })?;
        ClientIdAllowlist::parse(&text, path)
    }

    /// Parses the text of an allowlist; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ClientIdAllowlist, AuthFileError> {
        let mut ids = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let id = raw.trim();
            if id.is_empty() || id.starts_with('#') {
                continue;
            }
            let reason = if id.len() > 65535 {
                Some("a client id is at most 65535 bytes")
            } else if id.chars().any(char::is_control) {
                Some("a client id must not contain control characters")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(AuthFileError::Malformed {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: reason.to_owned(),
                });
            }
            ids.insert(id.into());
        }
        Ok(ClientIdAllowlist { ids })
    }

    /// Whether `client_id` is listed.
    pub fn contains(&self, client_id: &str) -> bool {
        self.ids.contains(client_id)
    }

    /// How many ids are listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_one_a_line_with_comments_and_blank_lines() {
        let list =
            ClientIdAllowlist::parse("# plant A\n\n  plc-01  \nplc-02\n#plc-03\n", Path::new("l"))
                .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains("plc-01"));
        assert!(list.contains("plc-02"));
        assert!(!list.contains("plc-03"));
        assert!(!list.contains(" plc-01"));
    }

    #[test]
    fn a_control_character_is_an_error_naming_the_file_and_line() {
        let err = ClientIdAllowlist::parse("ok\nbad\u{7}id\n", Path::new("/etc/holdfast/ids"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/holdfast/ids:2: a client id must not contain control characters"
        );
        let missing = ClientIdAllowlist::load(Path::new("/nonexistent/ids")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ids"),
            "{missing}"
        );
    }
}
