//! On-disk record encoding: one format-version byte, then postcard.
//!
//! Owns the framing every stored struct goes through, so a future format change is a new
//! version byte and a migration, never a silent misread. Never panics on bad bytes: a record
//! that does not decode is an error naming why.

use serde::{de::DeserializeOwned, Serialize};

/// The format version written in front of every record today.
pub const FORMAT_VERSION: u8 = 1;

/// Why a stored record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record is empty: not even a version byte.
    #[error("empty record")]
    Empty,
    /// The version byte is one this build does not know.
    #[error(
        "record format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnknownVersion(u8),
    /// postcard could not decode or encode the body.
    #[error("record body: {0}")]
    Body(#[from] postcard::Error),
}

/// Encodes `value` as `[FORMAT_VERSION, postcard...]`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RecordError> {
    let mut out = vec![FORMAT_VERSION];
    out.extend_from_slice(&postcard::to_allocvec(value)?);
    Ok(out)
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    let (version, body) = split_version(bytes)?;
    if version != FORMAT_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    decode_body(body)
}

/// Encodes `value` behind `version`: for a record type whose layout grew (the reader picks
/// the layout by [`split_version`]).
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, RecordError> {
    let mut out = vec![version];
    out.extend_from_slice(&postcard::to_allocvec(value)?);
    Ok(out)
}

/// The version byte and the body of a record.
pub fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    Ok((version, body))
}

/// Decodes a body as `T` (after [`split_version`] chose `T`).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RecordError> {
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        topic: String,
        qos: u8,
        payload: Vec<u8>,
    }

    #[test]
    fn a_record_round_trips_behind_its_version_byte() {
        let s = Sample {
            topic: "a/b".into(),
            qos: 1,
            payload: vec![1, 2, 3],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
    }

    #[test]
    fn an_unknown_version_or_garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode::<Sample>(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            decode::<Sample>(&[9, 1, 2]),
            Err(RecordError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<Sample>(&[FORMAT_VERSION, 0xff, 0xff, 0xff]),
            Err(RecordError::Body(_))
        ));
    }
}
