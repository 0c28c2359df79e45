//! The password file: one `user:$argon2id$...` PHC string a line, `#` comments, blank lines.
//!
//! Owns reading, checking, changing and atomically rewriting that file, and verifying a
//! password against it. It never logs or displays a hash, and never echoes a malformed line
//! (someone may have typed a plaintext password into it).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::AuthFileError;

/// The largest argon2 memory cost a hash in the file may ask for (KiB): a line with more is
/// refused rather than allowed to take the board's memory at every login.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Verifies `password` against an argon2 PHC hash with this thread's reused working memory
/// (see `auth::pool`); `None` when the hash is not an argon2 hash this build can check.
fn verify_with_reused_memory(password: &[u8], parsed: &PasswordHash<'_>) -> Option<bool> {
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .ok()?;
    let params = Params::try_from(parsed).ok()?;
    if params.m_cost() > MAX_M_COST_KIB {
        tracing::warn!(
            m_cost_kib = params.m_cost(),
            max = MAX_M_COST_KIB,
            "password hash asks for too much memory; refused"
        );
        return Some(false);
    }
    let expected = parsed.hash?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    super::pool::with_argon2_memory(blocks, |memory| {
        argon2
            .hash_password_into_with_memory(password, salt, &mut out, memory)
            .ok()
    })?;
    // `Output` compares in constant time.
    Some(argon2::password_hash::Output::new(&out).ok()? == expected)
}

/// Verified against when the user is unknown, so that "no such user" takes as long as "wrong
/// password" and response times do not reveal which user names exist. Its salt and output are
/// random bytes (no password is known to produce them), with the same default parameters as
/// [`PasswordFile::set`] so the work done is the same.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$P/wvbCJBNyvOB2YHM/VBhQ$Bmmwd2SCsonN3n/aNCEOXhB9pm1utfB8PnR7yB4GPWA";

/// A parsed password file. Comment and blank lines are kept, so `save` after `set` or
/// `remove` changes only the lines concerned.
#[derive(Clone, Default)]
pub struct PasswordFile {
    /// Every line of the file, in order.
    lines: Vec<Line>,
}

/// One line of the file.
#[derive(Clone)]
enum Line {
    /// A comment or blank line, kept verbatim.
    Other(String),
    /// A user and the PHC string of their password (checked at load: argon2id).
    Entry { user: String, hash: String },
}

impl fmt::Debug for PasswordFile {
    /// Lists the users only: a hash is a secret worth brute-forcing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users().collect::<Vec<_>>())
            .finish()
    }
}

impl PasswordFile {
    /// An empty password file (no users).
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    /// Reads and checks a password file. Any malformed line, non-argon2id hash or user listed
    /// twice is an error naming the file and the line.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text, path)
    }

    /// Parses the text of a password file read from `path` (named in errors).
    fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthFileError> {
        let mut file = PasswordFile::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let malformed = |reason: String| AuthFileError::Malformed {
                path: path.to_owned(),
                line,
                reason,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let Some((user, hash)) = trimmed.split_once(':') else {
                return Err(malformed(
                    "expected user:argon2id-hash (manage this file with `holdfast passwd`)"
                        .to_owned(),
                ));
            };
            if let Err(reason) = check_user(user) {
                return Err(malformed(format!("invalid user name: {reason}")));
            }
            let hash = hash.trim();
            match PasswordHash::new(hash) {
                Ok(parsed) if parsed.algorithm.as_str() == "argon2id" => {}
                _ => {
                    return Err(malformed(format!(
                        "the password of {user:?} is not an argon2id PHC string ($argon2id$...)"
                    )))
                }
            }
            if let Some(first) = file.line_of(user) {
                return Err(malformed(format!(
                    "user {user:?} is listed twice (first on line {first})"
                )));
            }
            file.lines.push(Line::Entry {
                user: user.to_owned(),
                hash: hash.to_owned(),
            });
        }
        Ok(file)
    }

    /// The 1-based line of `user`'s entry, if listed.
    fn line_of(&self, user: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| matches!(l, Line::Entry { user: u, .. } if u == user))
            .map(|i| i + 1)
    }

    fn hash_of(&self, user: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { user: u, hash } if u == user => Some(hash.as_str()),
            _ => None,
        })
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.hash_of(user).is_some()
    }

    /// Whether `password` is `user`'s. CPU- and memory-heavy (one argon2 hash, ~19 MiB and tens
    /// of milliseconds): call it off the async runtime. An unknown user costs the same as a
    /// wrong password (a dummy hash is verified) so timing does not reveal who exists.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.hash_of(user) {
            Some(hash) => (hash, true),
            None => (DUMMY_HASH, false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = verify_with_reused_memory(password, &parsed).unwrap_or(false);
        known && matches
    }

    /// Sets (adds or replaces) `user`'s password: argon2id with the `argon2` crate's default
    /// parameters (m=19456 KiB, t=2, p=1: OWASP's recommendation, ~19 MiB and tens of
    /// milliseconds per check on an ARM board) and a random salt from the OS.
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), AuthFileError> {
        check_user(user).map_err(|reason| AuthFileError::InvalidUser {
            user: user.to_owned(),
            reason,
        })?;
        if password.is_empty() {
            return Err(AuthFileError::EmptyPassword);
        }
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let hash = Argon2::default()
            .hash_password(password, &salt)
            .map_err(|e| AuthFileError::Hash(e.to_string()))?
            .to_string();
        let existing = self.lines.iter_mut().find_map(|l| match l {
            Line::Entry { user: u, hash } if u == user => Some(hash),
            _ => None,
        });
        match existing {
            Some(old) => *old = hash,
            None => self.lines.push(Line::Entry {
                user: user.to_owned(),
                hash,
            }),
        }
        Ok(())
    }

    /// Removes `user`; false when they were not listed.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { user: u, .. } if u == user));
        self.lines.len() != before
    }

    /// The users, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { user, .. } => Some(user.as_str()),
            Line::Other(_) => None,
        })
    }

    /// The file's text.
    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(text) => out.push_str(text),
                Line::Entry { user, hash } => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(hash);
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file in the same directory (mode 0600), fsync,
    /// rename over `path`, fsync of the directory. A crash leaves the old file or the new one,
    /// never half of one; the file is never readable by other users, not even for a moment.
    pub fn save(&self, path: &Path) -> Result<(), AuthFileError> {
        let write_error = |source| AuthFileError::Write {
            path: path.to_owned(),
            source,
        };
        let file_name = path.file_name().ok_or_else(|| {
            write_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = dir.join(temp_name);
        let result = write_and_rename(&self.render(), &temp, path, &dir);
        if result.is_err() {
            // Best effort: the error that matters is the one returned.
            let _ = fs::remove_file(&temp);
        }
        result.map_err(write_error)
    }
}

fn write_and_rename(text: &str, temp: &Path, path: &Path, dir: &Path) -> io::Result<()> {
    // A stale temporary file from a crashed run would make `create_new` fail.
    match fs::remove_file(temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)?;
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A user name must be storable on one line before a `:` and must not look like a comment.
pub(super) fn check_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        Err("must not be empty")
    } else if user.contains(':') {
        Err("must not contain ':'")
    } else if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must not contain whitespace or control characters")
    } else if user.starts_with('#') {
        Err("must not start with '#' (it would read as a comment)")
    } else if user.len() > 65535 {
        Err("must be at most 65535 bytes (the MQTT limit)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_password_survives_save_and_load_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::new();
        file.set("alice", b"s3cret").unwrap();
        file.set("bob", b"hunter2").unwrap();
        file.save(&path).unwrap();
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(loaded.verify("alice", b"s3cret"));
        assert!(loaded.verify("bob", b"hunter2"));
        assert!(!loaded.verify("alice", b"hunter2"));
        assert!(!loaded.verify("carol", b"s3cret"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_saved_file_is_readable_by_its_owner_only_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = PasswordFile::new();
        file.set("alice", b"pw").unwrap();
        file.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["passwd"]);
    }

    #[test]
    fn comments_and_blank_lines_are_allowed_and_kept_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::new();
        file.set("alice", b"pw").unwrap();
        let entry = file.render();
        fs::write(
            &path,
            format!("# gateway users\n\n  # indented comment\n{entry}"),
        )
        .unwrap();
        let mut loaded = PasswordFile::load(&path).unwrap();
        assert!(loaded.verify("alice", b"pw"));
        loaded.set("bob", b"pw2").unwrap();
        assert!(loaded.remove("alice"));
        assert!(!loaded.remove("alice"));
        loaded.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# gateway users\n\n  # indented comment\nbob:$argon2id$"),
            "{text}"
        );
        assert_eq!(PasswordFile::load(&path).unwrap().users().count(), 1);
    }

    #[test]
    fn setting_an_existing_user_replaces_their_password_in_place() {
        let mut file = PasswordFile::new();
        file.set("alice", b"old").unwrap();
        file.set("bob", b"b").unwrap();
        file.set("alice", b"new").unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(file.verify("alice", b"new"));
        assert!(!file.verify("alice", b"old"));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_file_and_line_without_echoing_it() {
        let path = Path::new("/etc/holdfast/passwd");
        let mut good = PasswordFile::new();
        good.set("alice", b"pw").unwrap();
        let entry = good.render();
        for (text, line, reason) in [
            (format!("# c\n{entry}bob\n"), 3, "expected user:argon2id-hash"),
            (format!("{entry}bob:plaintext-secret\n"), 2, "not an argon2id PHC string"),
            (
                "bob:$argon2i$v=19$m=4096,t=3,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY\n".to_owned(),
                1,
                "not an argon2id PHC string",
            ),
            (format!("{entry}\n{entry}"), 3, "listed twice (first on line 1)"),
            (format!("bad user{}", &entry[5..]), 1, "invalid user name"),
        ] {
            let err = PasswordFile::parse(&text, path).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("/etc/holdfast/passwd:{line}: ")),
                "{shown}"
            );
            assert!(shown.contains(reason), "{shown}");
            assert!(!shown.contains("plaintext-secret"), "{shown}");
            assert!(!shown.contains("$argon2id$v="), "{shown}");
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let err = PasswordFile::load(Path::new("/nonexistent/passwd")).unwrap_err();
        assert!(
            matches!(&err, AuthFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(err.to_string().contains("/nonexistent/passwd"), "{err}");
    }

    #[test]
    fn user_names_must_be_non_empty_without_colons_whitespace_or_a_leading_hash() {
        let mut file = PasswordFile::new();
        for bad in ["", "a:b", "a b", "a\tb", "#admin", "a\u{1}"] {
            assert!(
                matches!(file.set(bad, b"pw"), Err(AuthFileError::InvalidUser { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            file.set("alice", b""),
            Err(AuthFileError::EmptyPassword)
        ));
        assert_eq!(file.users().count(), 0);
    }

    #[test]
    fn debug_output_lists_users_but_never_hashes() {
        let mut file = PasswordFile::new();
        file.set("alice", b"pw").unwrap();
        let shown = format!("{file:?}");
        assert_eq!(shown, "PasswordFile { users: [\"alice\"] }");
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2id_hash_with_default_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        let mut file = PasswordFile::new();
        file.set("alice", b"pw").unwrap();
        let real = PasswordHash::new(file.hash_of("alice").unwrap()).unwrap();
        assert_eq!(parsed.params, real.params);
        assert_eq!(parsed.version, real.version);
    }
}
