//! Decoding with the checks RFC 7252 asks of a recipient that coap-lite leaves to its caller,
//! and the replies a server builds.
//!
//! Owns: what makes a datagram a message this server processes (version 1, a well-formed
//! empty message, no payload marker without a payload, a size limit, no unrecognized critical
//! option in a request), and the shapes of ACK, RST and responses. Never decides what a
//! request means (that is [`crate::request`]) and never touches a socket.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

/// Why a datagram is not a CoAP message this server can process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 4-byte header, or a token or option runs past the end.
    #[error("truncated message ({0} bytes)")]
    Truncated(usize),
    /// Not CoAP version 1.
    #[error("unsupported CoAP version {0}")]
    Version(u8),
    /// Token length 9..=15 (reserved).
    #[error("reserved token length {0}")]
    TokenLength(u8),
    /// An option delta or length uses the reserved nibble 15, or the numbers overflow.
    #[error("malformed option")]
    BadOption,
    /// A payload marker with nothing after it.
    #[error("payload marker without a payload")]
    EmptyPayload,
    /// An empty message (code 0.00) with a token, options or a payload.
    #[error("empty message with content")]
    NonEmptyEmpty,
    /// A code of the reserved classes 1, 6 or 7.
    #[error("reserved code {0}.{1:02}")]
    ReservedCode(u8, u8),
    /// Larger than the configured limit.
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    Oversized {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl DecodeError {
    /// A short stable label for counters (`$SYS`, `holdfast ctl`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated(_) => "truncated",
            DecodeError::Version(_) => "bad_version",
            DecodeError::TokenLength(_) | DecodeError::BadOption | DecodeError::EmptyPayload => {
                "malformed"
            }
            DecodeError::NonEmptyEmpty | DecodeError::ReservedCode(..) => "malformed",
            DecodeError::Oversized { .. } => "oversized",
        }
    }
}

/// The fixed header of a datagram, when its first four bytes are there: enough to reject a
/// confirmable message that does not decode (RFC 7252 4.2: answer it with RST).
pub fn peek_header(datagram: &[u8]) -> Option<(MessageType, u16)> {
    let [first, _code, hi, lo, ..] = *datagram else {
        return None;
    };
    let kind = match (first >> 4) & 0x3 {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    };
    Some((kind, u16::from_be_bytes([hi, lo])))
}

/// Decodes one datagram of at most `limit` bytes.
pub fn decode(datagram: &[u8], limit: usize) -> Result<Packet, DecodeError> {
    if datagram.len() > limit {
        return Err(DecodeError::Oversized {
            len: datagram.len(),
            limit,
        });
    }
    if datagram.len() < 4 {
        return Err(DecodeError::Truncated(datagram.len()));
    }
    let version = datagram[0] >> 6;
    if version != 1 {
        return Err(DecodeError::Version(version));
    }
    let token_len = datagram[0] & 0x0f;
    if token_len > 8 {
        return Err(DecodeError::TokenLength(token_len));
    }
    let code = datagram[1];
    let class = code >> 5;
    if matches!(class, 1 | 6 | 7) {
        return Err(DecodeError::ReservedCode(class, code & 0x1f));
    }
    if code == 0 && datagram.len() != 4 {
        return Err(DecodeError::NonEmptyEmpty);
    }
    if datagram.last() == Some(&0xff) && payload_marker_at(datagram) == Some(datagram.len() - 1) {
        return Err(DecodeError::EmptyPayload);
    }
    Packet::from_bytes(datagram).map_err(|e| match e {
        coap_lite::error::MessageError::InvalidTokenLength => {
            DecodeError::Truncated(datagram.len())
        }
        coap_lite::error::MessageError::InvalidOptionLength => {
            DecodeError::Truncated(datagram.len())
        }
        coap_lite::error::MessageError::InvalidHeader => DecodeError::Truncated(datagram.len()),
        _ => DecodeError::BadOption,
    })
}

/// The options of a datagram read straight from its bytes, in order, as `(number, value)`;
/// ends at the payload marker (kept in `marker`), at the end, or at the first malformed
/// option (`malformed` set: [`Packet::from_bytes`] reports it).
struct RawOptions<'a> {
    datagram: &'a [u8],
    at: usize,
    number: u32,
    marker: Option<usize>,
    malformed: bool,
}

impl<'a> RawOptions<'a> {
    /// The options after the header and a token of `token_len` bytes.
    fn new(datagram: &'a [u8], token_len: usize) -> Self {
        RawOptions {
            datagram,
            at: 4 + token_len,
            number: 0,
            marker: None,
            malformed: false,
        }
    }

    /// An option's delta or length nibble with its extended bytes.
    fn extended(&mut self, nibble: u8) -> Option<u32> {
        let d = self.datagram;
        let v = match nibble {
            13 => {
                let v = u32::from(*d.get(self.at)?) + 13;
                self.at += 1;
                v
            }
            14 => {
                let v =
                    u32::from(u16::from_be_bytes([*d.get(self.at)?, *d.get(self.at + 1)?])) + 269;
                self.at += 2;
                v
            }
            15 => return None,
            n => u32::from(n),
        };
        Some(v)
    }

    fn option(&mut self) -> Option<(u32, &'a [u8])> {
        let byte = *self.datagram.get(self.at)?;
        self.at += 1;
        let delta = self.extended(byte >> 4)?;
        let length = usize::try_from(self.extended(byte & 0x0f)?).ok()?;
        self.number += delta;
        let value = self.datagram.get(self.at..self.at + length)?;
        self.at += length;
        Some((self.number, value))
    }
}

impl<'a> Iterator for RawOptions<'a> {
    type Item = (u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.malformed || self.marker.is_some() || self.at >= self.datagram.len() {
            return None;
        }
        if self.datagram[self.at] == 0xff {
            self.marker = Some(self.at);
            return None;
        }
        let option = self.option();
        self.malformed = option.is_none();
        option
    }
}

/// Where the payload marker is, walking the options (None: no marker, or malformed options
/// that [`Packet::from_bytes`] will report).
fn payload_marker_at(datagram: &[u8]) -> Option<usize> {
    let mut options = RawOptions::new(datagram, usize::from(datagram[0] & 0x0f));
    options.by_ref().for_each(drop);
    options.marker
}

/// The client id a request datagram names in its Uri-Query (the last `clientid=` or `c=`, as
/// [`crate::request::parse`] takes it), read from the raw bytes without decoding the message:
/// enough for the reading task to hand the datagram to that client's task, which decodes it.
/// `None` when the datagram is not a well-formed version 1 CON or NON request, names no
/// client id, or names it in other than non-empty UTF-8 (the full decode says why).
pub fn request_client_id(datagram: &[u8]) -> Option<&str> {
    let [first, code, _, _, ..] = *datagram else {
        return None;
    };
    let token_len = usize::from(first & 0x0f);
    // Version 1; CON (0) or NON (1); a request: class 0 and not Empty.
    if first >> 6 != 1 || (first >> 4) & 0x03 > 1 || code >> 5 != 0 || code == 0 || token_len > 8 {
        return None;
    }
    let mut options = RawOptions::new(datagram, token_len);
    let mut client_id = None;
    for (number, value) in options.by_ref() {
        if number == 15 {
            for key in [&b"clientid="[..], &b"c="[..]] {
                if let Some(id) = value.strip_prefix(key) {
                    client_id = Some(id);
                }
            }
        }
    }
    // A malformed option, or a payload marker without a payload after it.
    if options.malformed || options.marker.is_some_and(|m| m + 1 == datagram.len()) {
        return None;
    }
    std::str::from_utf8(client_id?)
        .ok()
        .filter(|id| !id.is_empty())
}

/// Options this server understands. An odd-numbered (critical) option outside this list in a
/// request must not be ignored (RFC 7252 5.4.1).
pub const SUPPORTED_CRITICAL: &[u16] = &[
    3,  // Uri-Host
    7,  // Uri-Port
    11, // Uri-Path
    15, // Uri-Query
    17, // Accept
    23, // Block2
    27, // Block1
];

/// The first critical option of `packet` that is not in `supported`, if any.
pub fn unknown_critical_option(packet: &Packet, supported: &[u16]) -> Option<u16> {
    packet
        .options()
        .map(|(number, _)| *number)
        .find(|n| n % 2 == 1 && !supported.contains(n))
}

/// An empty ACK for message `mid`.
pub fn empty_ack(mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Acknowledgement);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}

/// A reset (RST) for message `mid`.
pub fn reset(mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Reset);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}

/// The response to `request`: piggybacked on the ACK of a confirmable request, or a
/// non-confirmable response with message id `next_mid` to a non-confirmable one (RFC 7252
/// 5.2.3). The token is the request's.
pub fn response_to(request: &Packet, code: ResponseType, next_mid: u16) -> Packet {
    let mut p = Packet::new();
    if request.header.get_type() == MessageType::Confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = request.header.message_id;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = next_mid;
    }
    p.header.code = MessageClass::Response(code);
    p.set_token(request.get_token().to_vec());
    p
}

/// Whether `request` asked, with its No-Response option (RFC 7967), not to be answered with
/// `code`: the option's bits 2, 8 and 16 decline 2.xx, 4.xx and 5.xx responses. Absent, empty
/// (0) or not a number: every response is wanted. A confirmable request whose response is
/// declined still gets its empty ACK (the caller's job).
pub fn response_declined(request: &Packet, code: ResponseType) -> bool {
    let Some(value) = request.get_first_option(CoapOption::NoResponse) else {
        return false;
    };
    // A uint of 0 or 1 bytes; a longer value is not a No-Response we understand.
    let bits = match value.as_slice() {
        [] => 0,
        [b] => *b,
        _ => return false,
    };
    let class = u8::from(MessageClass::Response(code)) >> 5;
    let mask = match class {
        2 => 2,
        4 => 8,
        5 => 16,
        _ => 0,
    };
    bits & mask != 0
}

/// The answer to `request`: [`response_to`] with `code`, `payload` and `options`, unless the
/// request's No-Response declines that class ([`response_declined`]): then a CON gets its
/// empty ACK and a NON nothing (`None`).
pub fn answer(
    request: &Packet,
    code: ResponseType,
    payload: Vec<u8>,
    options: Vec<(CoapOption, Vec<u8>)>,
    next_mid: u16,
) -> Option<Packet> {
    if response_declined(request, code) {
        return (request.header.get_type() == MessageType::Confirmable)
            .then(|| empty_ack(request.header.message_id));
    }
    let mut r = response_to(request, code, next_mid);
    r.payload = payload;
    for (option, value) in options {
        r.add_option(option, value);
    }
    Some(r)
}

/// A separate response (RFC 7252 5.2.2): sent after an empty ACK, confirmable, with its own
/// message id and the request's token.
pub fn separate_response(token: &[u8], code: ResponseType, mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = mid;
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    p
}

/// The Uri-Path segments, each UTF-8; `None` if one is not.
pub fn uri_path(packet: &Packet) -> Option<Vec<String>> {
    match packet.get_option(CoapOption::UriPath) {
        None => Some(Vec::new()),
        Some(list) => list
            .iter()
            .map(|seg| String::from_utf8(seg.clone()).ok())
            .collect(),
    }
}

/// The Uri-Query options as `(key, value)`; a query without `=` has an empty value. `None`
/// if one is not UTF-8.
pub fn uri_query(packet: &Packet) -> Option<Vec<(String, String)>> {
    match packet.get_option(CoapOption::UriQuery) {
        None => Some(Vec::new()),
        Some(list) => list
            .iter()
            .map(|q| {
                let text = std::str::from_utf8(q).ok()?;
                Some(match text.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (text.to_owned(), String::new()),
                })
            })
            .collect(),
    }
}

/// A response code as `c.dd` (e.g. "2.05"), as EMQX's JSON and logs write it.
pub fn code_string(code: ResponseType) -> String {
    let byte: u8 = MessageClass::Response(code).into();
    format!("{}.{:02}", byte >> 5, byte & 0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::RequestType;

    fn request(kind: MessageType, path: &[&str]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = 0x1234;
        p.set_token(vec![1, 2, 3]);
        for seg in path {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p.payload = b"21.5".to_vec();
        p
    }

    #[test]
    fn a_well_formed_request_decodes_with_its_path_and_query() {
        let mut p = request(MessageType::Confirmable, &["ps", "sensors", "t1"]);
        p.add_option(CoapOption::UriQuery, b"qos=1".to_vec());
        p.add_option(CoapOption::UriQuery, b"retain".to_vec());
        let bytes = p.to_bytes().unwrap();
        let back = decode(&bytes, 1152).unwrap();
        assert_eq!(uri_path(&back).unwrap(), ["ps", "sensors", "t1"]);
        assert_eq!(
            uri_query(&back).unwrap(),
            [
                ("qos".to_owned(), "1".to_owned()),
                ("retain".to_owned(), String::new())
            ]
        );
        assert_eq!(back.payload, b"21.5");
        assert_eq!(
            peek_header(&bytes),
            Some((MessageType::Confirmable, 0x1234))
        );
    }

    #[test]
    fn every_malformation_has_its_own_error() {
        let good = request(MessageType::Confirmable, &["ps", "a"])
            .to_bytes()
            .unwrap();
        assert_eq!(decode(&good[..3], 1152), Err(DecodeError::Truncated(3)));
        let mut v2 = good.clone();
        v2[0] = (v2[0] & 0x3f) | 0x80;
        assert_eq!(decode(&v2, 1152), Err(DecodeError::Version(2)));
        let mut tkl = good.clone();
        tkl[0] = (tkl[0] & 0xf0) | 0x09;
        assert_eq!(decode(&tkl, 1152), Err(DecodeError::TokenLength(9)));
        let mut reserved = good.clone();
        reserved[1] = 0xc1; // 6.01
        assert_eq!(
            decode(&reserved, 1152),
            Err(DecodeError::ReservedCode(6, 1))
        );
        assert_eq!(
            decode(&good, 8),
            Err(DecodeError::Oversized {
                len: good.len(),
                limit: 8
            })
        );
        let mut marker_only = request(MessageType::Confirmable, &["ps"]);
        marker_only.payload.clear();
        let mut bytes = marker_only.to_bytes().unwrap();
        bytes.push(0xff);
        assert_eq!(decode(&bytes, 1152), Err(DecodeError::EmptyPayload));
        // an option whose length runs past the end
        let mut cut = request(MessageType::Confirmable, &["ps", "a-long-segment"]);
        cut.payload.clear();
        let bytes = cut.to_bytes().unwrap();
        assert_eq!(
            decode(&bytes[..bytes.len() - 3], 1152),
            Err(DecodeError::Truncated(bytes.len() - 3))
        );
        // an empty message with a token
        let mut empty = empty_ack(7).to_bytes().unwrap();
        empty.push(0xAA);
        empty[0] |= 1;
        assert_eq!(decode(&empty, 1152), Err(DecodeError::NonEmptyEmpty));
        // option delta nibble 15 without a payload marker
        let mut bad = good[..4 + 3].to_vec();
        bad.push(0xf1);
        bad.push(0x00);
        assert_eq!(decode(&bad, 1152), Err(DecodeError::BadOption));
    }

    #[test]
    fn an_unknown_critical_option_is_found_and_elective_ones_are_not() {
        let mut p = request(MessageType::Confirmable, &["ps", "a"]);
        p.add_option(CoapOption::Unknown(2050), vec![1]); // elective
        assert_eq!(unknown_critical_option(&p, SUPPORTED_CRITICAL), None);
        p.add_option(CoapOption::IfMatch, vec![1]); // 1: critical, not supported
        assert_eq!(unknown_critical_option(&p, SUPPORTED_CRITICAL), Some(1));
    }

    #[test]
    fn responses_are_piggybacked_on_con_and_new_non_messages_otherwise() {
        let con = request(MessageType::Confirmable, &["ps", "a"]);
        let r = response_to(&con, ResponseType::Changed, 99);
        assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(r.header.message_id, 0x1234);
        assert_eq!(r.get_token(), &[1, 2, 3]);
        let non = request(MessageType::NonConfirmable, &["ps", "a"]);
        let r = response_to(&non, ResponseType::Changed, 99);
        assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(r.header.message_id, 99);
        assert_eq!(code_string(ResponseType::Content), "2.05");
        assert_eq!(code_string(ResponseType::NotFound), "4.04");
        assert_eq!(code_string(ResponseType::ServiceUnavailable), "5.03");
    }

    #[test]
    fn no_response_declines_the_classes_it_names_and_nothing_else() {
        let mut p = request(MessageType::NonConfirmable, &["ps", "a"]);
        assert!(!response_declined(&p, ResponseType::Changed), "no option");
        p.add_option(CoapOption::NoResponse, vec![2]);
        assert!(response_declined(&p, ResponseType::Changed));
        assert!(response_declined(&p, ResponseType::Content));
        assert!(!response_declined(&p, ResponseType::Unauthorized));
        assert!(!response_declined(&p, ResponseType::ServiceUnavailable));
        p.clear_option(CoapOption::NoResponse);
        p.add_option(CoapOption::NoResponse, vec![2 | 8 | 16]);
        assert!(response_declined(&p, ResponseType::Changed));
        assert!(response_declined(&p, ResponseType::NotFound));
        assert!(response_declined(&p, ResponseType::InternalServerError));
        p.clear_option(CoapOption::NoResponse);
        p.add_option(CoapOption::NoResponse, Vec::new());
        assert!(
            !response_declined(&p, ResponseType::Changed),
            "0: all wanted"
        );
        p.clear_option(CoapOption::NoResponse);
        p.add_option(CoapOption::NoResponse, vec![0, 2]);
        assert!(!response_declined(&p, ResponseType::Changed), "not a uint8");
    }

    #[test]
    fn the_client_id_is_read_from_the_raw_request_as_the_parser_reads_it() {
        let mut p = request(MessageType::Confirmable, &["ps", "a"]);
        p.add_option(CoapOption::UriQuery, b"qos=1".to_vec());
        p.add_option(CoapOption::UriQuery, b"clientid=first".to_vec());
        p.add_option(CoapOption::UriQuery, b"c=dev-7".to_vec());
        p.add_option(CoapOption::NoResponse, vec![2]);
        p.payload = b"21.5".to_vec();
        let bytes = p.to_bytes().unwrap();
        assert_eq!(request_client_id(&bytes), Some("dev-7"));
        let parsed = crate::request::parse(&decode(&bytes, 1152).unwrap()).unwrap();
        assert_eq!(parsed.identity.client_id.as_deref(), Some("dev-7"));
        // Long option values (extended lengths) are walked over.
        let mut long = request(MessageType::NonConfirmable, &["ps", &"t".repeat(300)]);
        long.add_option(
            CoapOption::UriQuery,
            format!("clientid={}", "x".repeat(20)).into_bytes(),
        );
        assert_eq!(
            request_client_id(&long.to_bytes().unwrap()),
            Some("xxxxxxxxxxxxxxxxxxxx")
        );
        // Not a request, no client id, an empty one, not UTF-8, cut short: the full path.
        let mut ack = request(MessageType::Acknowledgement, &["ps", "a"]);
        ack.add_option(CoapOption::UriQuery, b"c=x".to_vec());
        assert_eq!(request_client_id(&ack.to_bytes().unwrap()), None);
        let none = request(MessageType::Confirmable, &["ps", "a"])
            .to_bytes()
            .unwrap();
        assert_eq!(request_client_id(&none), None);
        for bad in [&b"clientid="[..], &b"c=\xff"[..]] {
            let mut p = request(MessageType::Confirmable, &["ps", "a"]);
            p.add_option(CoapOption::UriQuery, bad.to_vec());
            assert_eq!(request_client_id(&p.to_bytes().unwrap()), None);
        }
        assert_eq!(request_client_id(&bytes[..bytes.len() - 10]), None);
        let mut marker_only = none.clone();
        marker_only.push(0xff);
        assert_eq!(request_client_id(&marker_only), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode(&bytes, 1152);
            let _ = peek_header(&bytes);
            // Whatever the raw read finds, the decoder agrees with it.
            if let Some(id) = request_client_id(&bytes) {
                if let Ok(p) = decode(&bytes, 1152) {
                    if let Ok(r) = crate::request::parse(&p) {
                        proptest::prop_assert_eq!(r.identity.client_id.as_deref(), Some(id));
                    }
                }
            }
        }
    }
}
