//! The identity in a client certificate: subject CN and subject alternative names.
//!
//! Owns reading those two fields out of a DER certificate that rustls has *already verified*
//! against the listener's CA, so certificate-based authentication can take the CN (or a SAN)
//! as the username, as EMQX's `peer_cert_as_username` does. It is a bounded walk over DER
//! TLVs, sans-IO, that returns `None` on anything it does not understand and never panics;
//! it must never be used to decide whether a certificate is valid (rustls/webpki does that).
//! A full X.509 crate would add a dozen crates to the firmware for these two fields.

use std::net::IpAddr;

/// Most SANs kept from one certificate; the rest are ignored.
const MAX_SANS: usize = 32;

/// Who a verified client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's common name (OID 2.5.4.3), the first one when there are several.
    pub cn: Option<String>,
    /// Subject alternative names, in certificate order (at most 32).
    pub sans: Vec<SubjectAltName>,
    /// The user name this certificate logs in as, when the listener has
    /// `peer_cert_as_username`: the client is then authenticated by the certificate.
    pub login: Option<String>,
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    /// `DNS:` name.
    Dns(String),
    /// `email:` (rfc822Name).
    Email(String),
    /// `URI:`.
    Uri(String),
    /// `IP:` address.
    Ip(IpAddr),
}

impl PeerCert {
    /// The name `identity` picks from this certificate (`None` when it has no such part).
    pub fn identity(&self, identity: crate::config::CertIdentity) -> Option<String> {
        match identity {
            crate::config::CertIdentity::Cn => self.cn.clone(),
            crate::config::CertIdentity::San => self.sans.iter().find_map(|s| match s {
                SubjectAltName::Dns(name) => Some(name.clone()),
                _ => None,
            }),
        }
        .filter(|name| !name.is_empty())
    }

    /// Reads the CN and SANs of a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        let mut tbs = tbs_at_validity(der)?;
        let _validity = tbs.next()?;
        let (_, subject) = expect(&mut tbs, SEQUENCE)?;
        let mut out = PeerCert {
            cn: common_name(subject),
            sans: Vec::new(),
            login: None,
        };
        let _spki = tbs.next()?;
        while let Some((tag, value)) = tbs.next() {
            if tag == 0xa3 {
                out.sans = subject_alt_names(value).unwrap_or_default();
            }
        }
        Some(out)
    }
}

/// The validity period of a DER certificate as Unix seconds `(not_before, not_after)`; `None`
/// when it cannot be read. For warnings only (rustls/webpki decides validity).
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, validity) = expect(&mut tbs_at_validity(der)?, SEQUENCE)?;
    let mut v = Der(validity);
    let (t1, nb) = v.next()?;
    let (t2, na) = v.next()?;
    Some((asn1_time(t1, nb)?, asn1_time(t2, na)?))
}

/// A cursor over a certificate's TBSCertificate, past version, serial, signature and issuer:
/// its next item is the validity, then the subject.
fn tbs_at_validity(der: &[u8]) -> Option<Der<'_>> {
    let (_, cert) = expect(&mut Der(der), SEQUENCE)?;
    let (_, tbs) = expect(&mut Der(cert), SEQUENCE)?;
    let mut tbs = Der(tbs);
    let (tag, _) = tbs.next()?;
    if tag == 0xa0 {
        // [0] version; the serial number follows.
        let _serial = tbs.next()?;
    }
    let _signature = tbs.next()?;
    let _issuer = tbs.next()?;
    Some(tbs)
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18) as Unix seconds.
fn asn1_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 if text.len() == 14 => (text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// A cursor over consecutive DER TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next `(tag, value)`; `None` at the end or on a malformed or huge length.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, value))
    }
}

fn expect<'a>(der: &mut Der<'a>, tag: u8) -> Option<(u8, &'a [u8])> {
    der.next().filter(|(t, _)| *t == tag)
}

/// The first CN in a Name (SEQUENCE OF SET OF {type, value}).
fn common_name(name: &[u8]) -> Option<String> {
    let mut rdns = Der(name);
    while let Some((tag, rdn)) = rdns.next() {
        if tag != SET {
            continue;
        }
        let mut attrs = Der(rdn);
        while let Some((_, attr)) = expect(&mut attrs, SEQUENCE) {
            let mut fields = Der(attr);
            let Some((_, oid)) = expect(&mut fields, OID) else {
                continue;
            };
            if oid == OID_CN {
                let (tag, value) = fields.next()?;
                return directory_string(tag, value);
            }
        }
    }
    None
}

/// A DirectoryString: UTF8String, PrintableString, IA5String, TeletexString or BMPString.
fn directory_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(value).ok().map(str::to_owned),
        0x1e if value.len().is_multiple_of(2) => {
            let units = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// The GeneralNames of the subjectAltName extension in `[3] { SEQUENCE OF Extension }`.
fn subject_alt_names(extensions: &[u8]) -> Option<Vec<SubjectAltName>> {
    let (_, list) = expect(&mut Der(extensions), SEQUENCE)?;
    let mut list = Der(list);
    while let Some((_, ext)) = expect(&mut list, SEQUENCE) {
        let mut fields = Der(ext);
        let Some((_, oid)) = expect(&mut fields, OID) else {
            continue;
        };
        if oid != OID_SAN {
            continue;
        }
        // An optional `critical` BOOLEAN precedes the OCTET STRING.
        let octets = loop {
            match fields.next()? {
                (OCTET_STRING, v) => break v,
                _ => continue,
            }
        };
        let (_, names) = expect(&mut Der(octets), SEQUENCE)?;
        let mut names = Der(names);
        let mut out = Vec::new();
        while let Some((tag, value)) = names.next() {
            if out.len() == MAX_SANS {
                break;
            }
            let text = || std::str::from_utf8(value).ok().map(str::to_owned);
            let san = match tag {
                0x81 => text().map(SubjectAltName::Email),
                0x82 => text().map(SubjectAltName::Dns),
                0x86 => text().map(SubjectAltName::Uri),
                0x87 => match value.len() {
                    4 => <[u8; 4]>::try_from(value)
                        .ok()
                        .map(|a| SubjectAltName::Ip(IpAddr::from(a))),
                    16 => <[u8; 16]>::try_from(value)
                        .ok()
                        .map(|a| SubjectAltName::Ip(IpAddr::from(a))),
                    _ => None,
                },
                _ => None,
            };
            out.extend(san);
        }
        return Some(out);
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj
    /// "/O=Plant 4/CN=sensor-17" -addext "subjectAltName=DNS:sensor-17.local,IP:10.0.0.7,
    /// email:ops@example.com,URI:urn:dev:17" -outform DER`, base64.
    const CERT: &str = include_str!("peer_cert_test.b64");

    fn decode_base64(text: &str) -> Vec<u8> {
        let table = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let clean: Vec<u8> = text
            .bytes()
            .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
            .map(table)
            .collect();
        let mut out = Vec::new();
        for chunk in clean.chunks(4) {
            let mut acc = 0u32;
            for (i, v) in chunk.iter().enumerate() {
                acc |= u32::from(*v) << (18 - 6 * i);
            }
            let bytes = acc.to_be_bytes();
            out.extend_from_slice(&bytes[1..chunk.len()]);
        }
        out
    }

    #[test]
    fn the_validity_period_is_read_in_unix_seconds() {
        let der = decode_base64(CERT);
        // openssl x509 -dates: Nov 23 15:40:19 2026 GMT .. Nov 20 15:40:19 2036 GMT.
        assert_eq!(validity(&der), Some((1_795_448_419, 2_110_808_419)));
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x18, b"20000229235959Z"), Some(951_868_799));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x17, b"701301000000Z"), None);
        assert_eq!(asn1_time(0x18, b"garbage"), None);
        assert_eq!(validity(&der[..40]), None);
    }

    #[test]
    fn the_cn_and_every_kind_of_san_are_read_from_a_certificate() {
        let der = decode_base64(CERT);
        let cert = PeerCert::from_der(&der).unwrap();
        assert_eq!(cert.cn.as_deref(), Some("sensor-17"));
        assert_eq!(
            cert.sans,
            [
                SubjectAltName::Dns("sensor-17.local".into()),
                SubjectAltName::Ip(IpAddr::from([10, 0, 0, 7])),
                SubjectAltName::Email("ops@example.com".into()),
                SubjectAltName::Uri("urn:dev:17".into()),
            ]
        );
    }

    #[test]
    fn truncated_or_garbage_input_gives_none_without_panicking() {
        let der = decode_base64(CERT);
        for cut in 0..der.len() {
            let _ = PeerCert::from_der(&der[..cut]);
        }
        assert_eq!(PeerCert::from_der(b""), None);
        assert_eq!(
            PeerCert::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(PeerCert::from_der(b"GET / HTTP/1.1\r\n"), None);
    }
}
