//! The CoRE link format (RFC 6690, application/link-format, 40) as LwM2M uses it: the
//! object list of a Register or Update (`</1/0>,</3/0>;ver=1.1,</lwm2m>;rt="oma.lwm2m"`) and the
//! answer to a Discover (`</3/0/1>,</3/0/7>;dim=2`).
//!
//! Owns parsing (quoted values may hold commas and semicolons; whitespace around entries is
//! skipped), the LwM2M reading of a registration's links (the alternate path from
//! `rt="oma.lwm2m"`, the object list relative to it) and writing links back. Bounded by the
//! caller's payload size; never panics on input.

/// One link: its target and attributes in order (`;name` has no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI between `<` and `>`.
    pub target: String,
    /// `name=value` (quotes removed) or a bare `name`.
    pub attrs: Vec<(String, Option<String>)>,
}

impl Link {
    /// The value of attribute `name`, if present with a value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Why a payload is not link format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// An entry that does not start with `<` or whose `>` is missing.
    #[error("link {0} is not <target>")]
    BadTarget(usize),
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value in link {0}")]
    Unterminated(usize),
    /// An empty attribute name.
    #[error("empty attribute name in link {0}")]
    EmptyAttribute(usize),
    /// An attribute name outside RFC 6690's token characters, or a value with a stray quote.
    #[error("malformed attribute in link {0}")]
    BadAttribute(usize),
}

/// RFC 6690 `parmname` characters (and `*` for extended parameters).
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&+-.^_`|~*".contains(c)
}

/// Parses a link-format payload.
pub fn parse(text: &str) -> Result<Vec<Link>, LinkError> {
    let mut links = Vec::new();
    for (n, entry) in split_outside_quotes(text, ',', links.len())?
        .into_iter()
        .enumerate()
    {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let rest = entry.strip_prefix('<').ok_or(LinkError::BadTarget(n))?;
        let close = rest.find('>').ok_or(LinkError::BadTarget(n))?;
        let target = rest[..close].to_owned();
        let mut attrs = Vec::new();
        for part in split_outside_quotes(&rest[close + 1..], ';', n)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((name, value)) => {
                    let value = value.trim();
                    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                        Some(quoted) => quoted,
                        None => value,
                    };
                    if value.contains('"') {
                        return Err(LinkError::BadAttribute(n));
                    }
                    (name.trim(), Some(value.to_owned()))
                }
                None => (part, None),
            };
            if name.is_empty() {
                return Err(LinkError::EmptyAttribute(n));
            }
            if !name.chars().all(name_char) {
                return Err(LinkError::BadAttribute(n));
            }
            attrs.push((name.to_owned(), value));
        }
        links.push(Link { target, attrs });
    }
    Ok(links)
}

/// Splits at `sep` where it is not inside double quotes.
fn split_outside_quotes(text: &str, sep: char, link: usize) -> Result<Vec<&str>, LinkError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err(LinkError::Unterminated(link));
    }
    out.push(&text[start..]);
    Ok(out)
}

/// Writes links back as link format.
pub fn format(links: &[Link]) -> String {
    let mut out = String::new();
    for (i, l) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('<');
        out.push_str(&l.target);
        out.push('>');
        for (name, value) in &l.attrs {
            out.push(';');
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                let bare =
                    !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
                if bare {
                    out.push_str(v);
                } else {
                    out.push('"');
                    out.push_str(v);
                    out.push('"');
                }
            }
        }
    }
    out
}

/// What a registration's links say, in EMQX's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `alternatePath`: the target of the link with `rt="oma.lwm2m"`, or "/".
    pub alternate_path: String,
    /// `objectList`: the object and instance links (`/3/0`, `/5`), relative to the
    /// alternate path, in order, without the `rt="oma.lwm2m"` link itself.
    pub object_list: Vec<String>,
}

/// Reads the object list of a Register or Update payload.
pub fn registration(links: &[Link]) -> Registration {
    let alternate_path = links
        .iter()
        .find(|l| l.attr("rt") == Some("oma.lwm2m"))
        .map(|l| l.target.trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let prefix = if alternate_path == "/" {
        ""
    } else {
        alternate_path.as_str()
    };
    // The root link (`</>;ct=11543`, a 1.0 client naming its content format) names no
    // object, nor does the alternate path's own link.
    let object_list = links
        .iter()
        .filter(|l| l.attr("rt") != Some("oma.lwm2m"))
        .map(|l| {
            let t = l.target.strip_prefix(prefix).unwrap_or(&l.target);
            if t.starts_with('/') {
                t.to_owned()
            } else {
                format!("/{t}")
            }
        })
        .filter(|t| t != "/")
        .collect();
    Registration {
        alternate_path,
        object_list,
    }
}

/// The object instances of a registration's `object_list` (`/3/0`, not `/3` nor `/3/0/1`)
/// that a server may observe: all but the Security object's (`/0`), which the management
/// interface never reaches.
pub fn observable_instances(object_list: &[String]) -> impl Iterator<Item = &str> {
    object_list
        .iter()
        .map(String::as_str)
        .filter(|p| p.matches('/').count() == 2 && !p.starts_with("/0/"))
}

/// Whether a device whose registration listed `object_list` has `path` (`/o[/i[/r[/ri]]]`):
/// an object path when it listed the object or any of its instances, a deeper path when it
/// listed that instance. Never true for the Security object (`/0`).
pub fn registered(object_list: &[String], path: &str) -> bool {
    let mut segments = path.trim_matches('/').split('/');
    let object = segments.next().unwrap_or_default();
    if object.is_empty() || object == "0" {
        return false;
    }
    match segments.next() {
        None => object_list.iter().any(|p| {
            let rest = p.trim_start_matches('/');
            rest == object
                || rest
                    .strip_prefix(object)
                    .is_some_and(|tail| tail.starts_with('/'))
        }),
        Some(instance) => object_list
            .iter()
            .any(|p| p.trim_start_matches('/') == format!("{object}/{instance}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_payload_gives_the_object_list_and_the_alternate_path() {
        let links = parse(
            r#"</lwm2m>;rt="oma.lwm2m";ct=11543, </lwm2m/1/0>,</lwm2m/3/0>;ver=1.1,</lwm2m/5>"#,
        )
        .unwrap();
        assert_eq!(links.len(), 4);
        assert_eq!(links[0].attr("ct"), Some("11543"));
        assert_eq!(links[2].attr("ver"), Some("1.1"));
        assert_eq!(
            registration(&links),
            Registration {
                alternate_path: "/lwm2m".into(),
                object_list: vec!["/1/0".into(), "/3/0".into(), "/5".into()],
            }
        );
        let plain = parse("</>;ct=11543;hb,</1/0>,</3/0>,</3303/0>").unwrap();
        assert_eq!(
            registration(&plain),
            Registration {
                alternate_path: "/".into(),
                object_list: vec!["/1/0".into(), "/3/0".into(), "/3303/0".into()],
            }
        );
    }

    #[test]
    fn quoted_values_may_hold_separators_and_format_writes_back() {
        let links = parse(r#"</3/0/7>;dim=2;title="a, b; c",</3/0/1>;obs"#).unwrap();
        assert_eq!(links[0].attr("title"), Some("a, b; c"));
        assert_eq!(links[1].attrs, vec![("obs".to_owned(), None)]);
        assert_eq!(
            format(&links),
            r#"</3/0/7>;dim=2;title="a, b; c",</3/0/1>;obs"#
        );
        assert_eq!(parse(&format(&links)).unwrap(), links);
    }

    #[test]
    fn malformed_links_are_errors() {
        assert_eq!(parse("/3/0"), Err(LinkError::BadTarget(0)));
        assert_eq!(parse("</3/0"), Err(LinkError::BadTarget(0)));
        assert_eq!(parse(r#"</3>;rt="x"#), Err(LinkError::Unterminated(0)));
        assert_eq!(parse("</3>;=1"), Err(LinkError::EmptyAttribute(0)));
        // found by the fuzzer: a quote in a name broke the round trip
        assert_eq!(parse(r#"</3>;a"b"=1"#), Err(LinkError::BadAttribute(0)));
        assert_eq!(parse(r#"</3>;a=x"y"z"#), Err(LinkError::BadAttribute(0)));
        assert_eq!(parse("").unwrap(), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,200}") {
            let _ = parse(&text).map(|l| registration(&l));
        }
    }

    #[test]
    fn auto_observe_picks_registered_instances_and_paths_but_never_security() {
        let list: Vec<String> = [
            "/0/0", "/1/0", "/3/0", "/5", "/3303/0", "/3303/1", "/33030/0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            observable_instances(&list).collect::<Vec<_>>(),
            ["/1/0", "/3/0", "/3303/0", "/3303/1", "/33030/0"]
        );
        for yes in [
            "/3",
            "/3/0",
            "/3/0/13",
            "/5",
            "/3303",
            "/3303/1/5700",
            "/3303/1/5700/0",
        ] {
            assert!(registered(&list, yes), "{yes}");
        }
        for no in [
            "/0",
            "/0/0",
            "/0/0/1",
            "/3/1",
            "/330",
            "/3303/2/5700",
            "/5/0",
            "/4",
            "",
            "/",
        ] {
            assert!(!registered(&list, no), "{no}");
        }
    }
}
