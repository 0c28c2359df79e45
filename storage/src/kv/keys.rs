//! Key layout of the key-value trees, shared by both engines so they accept the same inputs.
//!
//! - `retained`: key = topic bytes.
//! - `sessions`: key = client id bytes.
//! - `pending`: key = client id length (u16 big-endian), client id bytes, seq (u64 big-endian).
//!   The length prefix keeps one client's range from containing another's (`a` vs `ab`); the
//!   big-endian seq makes sled's byte-order iteration the delivery order.

use super::KvError;

/// Tree names, also used in errors and logs.
pub(super) const RETAINED: &str = "retained";
pub(super) const SESSIONS: &str = "sessions";
pub(super) const PENDING: &str = "pending";

/// The prefix all pending keys of `client_id` start with.
pub(super) fn pending_prefix(client_id: &str) -> Result<Vec<u8>, KvError> {
    let len = u16::try_from(client_id.len()).map_err(|_| KvError::ClientIdTooLong {
        len: client_id.len(),
    })?;
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    Ok(key)
}

/// The key of pending message `seq` of `client_id`.
pub(super) fn pending_key(client_id: &str, seq: u64) -> Result<Vec<u8>, KvError> {
    let mut key = pending_prefix(client_id)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// The seq of a pending key found under `prefix`, or `None` if the key is malformed.
pub(super) fn pending_seq(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// A printable form of a key in `tree`, for errors and logs.
pub(super) fn describe(tree: &str, key: &[u8]) -> String {
    if tree != PENDING {
        return format!("{:?}", String::from_utf8_lossy(key));
    }
    let parsed = key.split_first_chunk::<2>().and_then(|(len, rest)| {
        let len = usize::from(u16::from_be_bytes(*len));
        let (client, seq) = rest.split_at_checked(len)?;
        let seq: [u8; 8] = seq.try_into().ok()?;
        Some(format!(
            "{:?}/{}",
            String::from_utf8_lossy(client),
            u64::from_be_bytes(seq)
        ))
    });
    parsed.unwrap_or_else(|| format!("{key:02x?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_order_by_seq_and_do_not_mix_clients_sharing_a_prefix() {
        let a1 = pending_key("a", 1).unwrap();
        let a256 = pending_key("a", 256).unwrap();
        let ab0 = pending_key("ab", 0).unwrap();
        assert!(a1 < a256);
        let prefix_a = pending_prefix("a").unwrap();
        assert!(!ab0.starts_with(&prefix_a));
        assert_eq!(pending_seq(&prefix_a, &a256), Some(256));
        assert_eq!(pending_seq(&prefix_a, &prefix_a), None);
    }

    #[test]
    fn a_client_id_longer_than_an_mqtt_string_is_refused() {
        let long = "x".repeat(70_000);
        assert!(matches!(
            pending_prefix(&long),
            Err(KvError::ClientIdTooLong { len: 70_000 })
        ));
    }

    #[test]
    fn keys_are_described_readably_even_when_malformed() {
        let key = pending_key("dev-1", 7).unwrap();
        assert_eq!(describe(PENDING, &key), "\"dev-1\"/7");
        assert_eq!(describe(PENDING, &[0, 9, 1]), "[00, 09, 01]");
        assert_eq!(describe(RETAINED, b"a/b"), "\"a/b\"");
    }
}
