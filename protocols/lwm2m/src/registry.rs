//! LwM2M registrations (OMA-TS-LightweightM2M 1.1 section 6.2, the Registration Interface):
//! Register, Update, De-register and lifetime expiry, as a state machine over the query
//! parameters, the object links, the device's address and the time the caller passes in.
//!
//! Owns every live registration, keyed by endpoint name and by location (`rd/{n}`), and the
//! rules: `ep` and `lt` are required (EMQX), `lwm2m` must be 1.0, 1.0.2 or 1.1 (else 4.12 as
//! the spec says), a lifetime below `lifetime_min` is raised to it and one above
//! `lifetime_max` refused; an endpoint name held by a live registration from another IP
//! address is refused (4.03) and from the same address (a rebooted device) replaced; an Update
//! may come from a new address or port (a NAT rebinding: EMQX answered 4.04 and forced a new
//! registration). Bounded by `max_endpoints`. Also writes EMQX's `register`/`update` JSON.
//! Never sends anything.

use crate::link::{self, Link};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest lifetime kept (a shorter one is raised to it).
    pub lifetime_min: Duration,
    /// Longest lifetime accepted (a longer one is refused).
    pub lifetime_max: Duration,
    /// Registrations held at once.
    pub max_endpoints: usize,
}

/// The parameters of a Register (and what an Update may change). Compact: a server holds
/// thousands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `ep`: the endpoint client name, shared with the tables that look it up.
    pub ep: Arc<str>,
    /// `lt`: lifetime in seconds, after the limits.
    pub lifetime: u32,
    /// `lwm2m`: the version.
    pub version: Box<str>,
    /// `b`: binding mode (default `U`).
    pub binding: Box<str>,
    /// Other query parameters (`sms`, `Q`, ...), in order.
    pub other: Vec<(String, String)>,
    /// The object links of the payload, as the link-format text it came in (checked when it
    /// came); [`Params::links`] reads them.
    links: Box<str>,
}

impl Params {
    /// The object links of the payload.
    pub fn links(&self) -> Vec<Link> {
        // The same text parsed when it came in: it parses again.
        link::parse(&self.links).unwrap_or_default()
    }

    /// The object list and alternate path of the links, in EMQX's terms.
    pub fn objects(&self) -> link::Registration {
        link::registration(&self.links())
    }

    /// Queue mode (binding `UQ`, `SQ`, `UQS`, or 1.1's `Q` parameter): commands wait until
    /// the device next talks.
    pub fn queue_mode(&self) -> bool {
        self.binding.contains('Q') || self.other.iter().any(|(k, _)| k == "Q")
    }
}

/// Why a Register or Update was refused, with its response code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    /// 4.00: a required parameter is missing or malformed.
    #[error("bad registration: {0}")]
    BadRequest(String),
    /// 4.12: an LwM2M version this server does not speak.
    #[error("unsupported LwM2M version {0:?} (1.0.x and 1.1.x are)")]
    Version(String),
    /// 4.03: the endpoint name is held by a live registration from another address.
    #[error("endpoint name {0:?} is registered from another address")]
    Taken(String),
    /// 4.04: no registration at this location (an Update or De-register).
    #[error("no registration at {0}")]
    NotFound(String),
    /// 5.03: `max_endpoints` registrations are held.
    #[error("the registry is full")]
    Full,
}

impl RegError {
    /// The CoAP response code, as `c.dd`.
    pub fn code(&self) -> &'static str {
        match self {
            RegError::BadRequest(_) => "4.00",
            RegError::Version(_) => "4.12",
            RegError::Taken(_) => "4.03",
            RegError::NotFound(_) => "4.04",
            RegError::Full => "5.03",
        }
    }
}

/// One live registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Where it lives: the `n` of `rd/{n}` (the Location-Path of the 2.01).
    pub id: u64,
    /// What the device registered with (updated by Updates).
    pub params: Params,
    /// Where the device talks from (the last Register or Update).
    pub addr: SocketAddr,
    /// When the lifetime runs out.
    pub expires_at: Instant,
}

impl Registration {
    /// Where it lives: `rd/{n}`.
    pub fn location(&self) -> String {
        format!("rd/{}", self.id)
    }
}

/// The `n` of a location `rd/{n}`.
fn location_id(location: &str) -> Option<u64> {
    location.strip_prefix("rd/")?.parse().ok()
}

/// Reads a Register's query parameters and payload.
pub fn register_params(
    query: &[(String, String)],
    payload: &[u8],
    limits: &Limits,
) -> Result<Params, RegError> {
    let mut ep = None;
    let mut lt = None;
    let mut version = None;
    let mut binding = None;
    let mut other = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "ep" => ep = Some(v.clone()),
            "lt" => lt = Some(parse_lifetime(v)?),
            "lwm2m" => version = Some(v.clone()),
            "b" => binding = Some(v.clone()),
            _ => other.push((k.clone(), v.clone())),
        }
    }
    let ep = ep
        .filter(|e| !e.is_empty())
        .ok_or_else(|| RegError::BadRequest("ep is required".into()))?;
    if ep.contains(['/', '+', '#']) || ep.chars().any(char::is_control) {
        return Err(RegError::BadRequest(format!(
            "endpoint name {ep:?} cannot be a topic level"
        )));
    }
    let lt = lt.ok_or_else(|| RegError::BadRequest("lt is required".into()))?;
    let version = version.unwrap_or_else(|| "1.0".into());
    if !supported_version(&version) {
        return Err(RegError::Version(version));
    }
    Ok(Params {
        ep: ep.into(),
        lifetime: bounded_lifetime(lt, limits)?,
        version: version.into(),
        binding: binding.unwrap_or_else(|| "U".into()).into(),
        other,
        links: parse_links(payload)?,
    })
}

/// 1.0, 1.1 and their patch forms (`1.0.2`; some clients write `1.0.0`).
fn supported_version(v: &str) -> bool {
    let mut parts = v.split('.');
    let major_minor = (parts.next(), parts.next());
    let patch_ok = match parts.next() {
        None => true,
        Some(p) => !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()),
    };
    matches!(major_minor, (Some("1"), Some("0" | "1"))) && patch_ok && parts.next().is_none()
}

fn parse_lifetime(v: &str) -> Result<u32, RegError> {
    v.parse()
        .map_err(|_| RegError::BadRequest(format!("lt={v}: expected seconds")))
}

fn bounded_lifetime(lt: u32, limits: &Limits) -> Result<u32, RegError> {
    let max = u32::try_from(limits.lifetime_max.as_secs()).unwrap_or(u32::MAX);
    if lt > max {
        return Err(RegError::BadRequest(format!(
            "lt={lt} exceeds lifetime_max ({max}s)"
        )));
    }
    let min = u32::try_from(limits.lifetime_min.as_secs()).unwrap_or(0);
    Ok(lt.max(min))
}

/// The payload's object links, checked, kept as the text they came in.
fn parse_links(payload: &[u8]) -> Result<Box<str>, RegError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| RegError::BadRequest("object links are not UTF-8".into()))?;
    link::parse(text).map_err(|e| RegError::BadRequest(e.to_string()))?;
    Ok(text.into())
}

/// The live registrations.
#[derive(Debug)]
pub struct Registry {
    /// Boxed: the table stays small for thousands of registrations.
    by_ep: HashMap<Arc<str>, Box<Registration>>,
    /// By the `n` of `rd/{n}`.
    by_location: HashMap<u64, Arc<str>>,
    next_location: u64,
    limits: Limits,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits) -> Self {
        Registry {
            by_ep: HashMap::new(),
            by_location: HashMap::new(),
            next_location: 0,
            limits,
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registers `params` from `addr`: the new registration, and the one it replaced (the
    /// same device registering again from its address).
    pub fn register(
        &mut self,
        params: Params,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<(Registration, Option<Registration>), RegError> {
        let replaced = match self.by_ep.get(&params.ep) {
            Some(old) if old.expires_at > now && old.addr.ip() != addr.ip() => {
                return Err(RegError::Taken(params.ep.to_string()));
            }
            Some(_) => self.remove_ep(&params.ep),
            None => None,
        };
        if self.by_ep.len() >= self.limits.max_endpoints {
            return Err(RegError::Full);
        }
        self.next_location += 1;
        let reg = Registration {
            id: self.next_location,
            expires_at: now + Duration::from_secs(u64::from(params.lifetime)),
            addr,
            params,
        };
        self.by_location.insert(reg.id, reg.params.ep.clone());
        self.by_ep
            .insert(reg.params.ep.clone(), Box::new(reg.clone()));
        Ok((reg, replaced))
    }

    /// Applies an Update (`lt`, `b`, `sms`... and the object links when the payload has
    /// any) from `addr`; the lifetime starts again. Returns the updated registration.
    pub fn update(
        &mut self,
        location: &str,
        query: &[(String, String)],
        payload: &[u8],
        addr: SocketAddr,
        now: Instant,
    ) -> Result<&Registration, RegError> {
        let not_found = || RegError::NotFound(location.to_owned());
        let ep = location_id(location)
            .and_then(|id| self.by_location.get(&id))
            .ok_or_else(not_found)?
            .clone();
        let mut lifetime = None;
        let mut binding = None;
        let mut other = Vec::new();
        for (k, v) in query {
            match k.as_str() {
                "lt" => lifetime = Some(bounded_lifetime(parse_lifetime(v)?, &self.limits)?),
                "b" => binding = Some(v.clone()),
                _ => other.push((k.clone(), v.clone())),
            }
        }
        let links = if payload.is_empty() {
            None
        } else {
            Some(parse_links(payload)?)
        };
        let reg = self.by_ep.get_mut(&ep).ok_or_else(not_found)?;
        if let Some(lt) = lifetime {
            reg.params.lifetime = lt;
        }
        if let Some(b) = binding {
            reg.params.binding = b.into();
        }
        for (k, v) in other {
            match reg.params.other.iter_mut().find(|(ok, _)| *ok == k) {
                Some(slot) => slot.1 = v,
                None => reg.params.other.push((k, v)),
            }
        }
        if let Some(links) = links {
            reg.params.links = links;
        }
        reg.addr = addr;
        reg.expires_at = now + Duration::from_secs(u64::from(reg.params.lifetime));
        Ok(reg)
    }

    /// De-registers the registration at `location`.
    pub fn deregister(&mut self, location: &str) -> Result<Registration, RegError> {
        let ep = location_id(location)
            .and_then(|id| self.by_location.get(&id))
            .cloned()
            .ok_or_else(|| RegError::NotFound(location.to_owned()))?;
        self.remove_ep(&ep)
            .ok_or_else(|| RegError::NotFound(location.to_owned()))
    }

    /// Removes and returns the registrations whose lifetime ran out by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Registration> {
        let gone: Vec<Arc<str>> = self
            .by_ep
            .values()
            .filter(|r| r.expires_at <= now)
            .map(|r| r.params.ep.clone())
            .collect();
        gone.iter().filter_map(|ep| self.remove_ep(ep)).collect()
    }

    /// When the next lifetime runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_ep.values().map(|r| r.expires_at).min()
    }

    /// The registration of `ep`.
    pub fn get(&self, ep: &str) -> Option<&Registration> {
        self.by_ep.get(ep).map(|r| &**r)
    }

    /// The registration at `location` (`rd/{n}`).
    pub fn at(&self, location: &str) -> Option<&Registration> {
        self.by_ep
            .get(self.by_location.get(&location_id(location)?)?)
            .map(|r| &**r)
    }

    /// Every registration, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.by_ep.values().map(|r| &**r)
    }

    /// Registrations held.
    pub fn len(&self) -> usize {
        self.by_ep.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.by_ep.is_empty()
    }

    fn remove_ep(&mut self, ep: &str) -> Option<Registration> {
        let reg = self.by_ep.remove(ep)?;
        self.by_location.remove(&reg.id);
        Some(*reg)
    }
}

/// Query parameters never echoed into the JSON (credentials some clients put in the query).
const SECRETS: &[&str] = &["password", "pwd", "psk", "token"];

/// EMQX's `register` / `update` uplink: `{"msgType":..,"data":{"ep","lt","lwm2m","b",<other
/// query parameters except secrets>,"alternatePath","objectList"}}`.
pub fn registration_json(msg_type: &str, reg: &Registration) -> Json {
    let p = &reg.params;
    let objects = p.objects();
    let mut data = Map::new();
    data.insert("ep".into(), json!(&*p.ep));
    data.insert("lt".into(), json!(p.lifetime));
    data.insert("lwm2m".into(), json!(&*p.version));
    data.insert("b".into(), json!(&*p.binding));
    for (k, v) in &p.other {
        if !SECRETS.contains(&k.to_ascii_lowercase().as_str()) {
            data.insert(k.clone(), json!(v));
        }
    }
    data.insert("alternatePath".into(), json!(objects.alternate_path));
    data.insert("objectList".into(), json!(objects.object_list));
    json!({ "msgType": msg_type, "data": Json::Object(data) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        lifetime_min: Duration::from_secs(15),
        lifetime_max: Duration::from_secs(86_400),
        max_endpoints: 3,
    };

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn params(ep: &str, lt: &str) -> Params {
        register_params(
            &q(&[
                ("ep", ep),
                ("lt", lt),
                ("lwm2m", "1.1"),
                ("b", "UQ"),
                ("sms", "123"),
            ]),
            b"</1/0>,</3/0>,</3303/0>",
            &LIMITS,
        )
        .unwrap()
    }

    #[test]
    fn register_checks_its_parameters_and_bounds_the_lifetime() {
        let p = params("dev1", "5");
        assert_eq!(p.lifetime, 15, "raised to lifetime_min");
        assert!(p.queue_mode());
        let err = |query: &[(&str, &str)]| register_params(&q(query), b"", &LIMITS).unwrap_err();
        assert_eq!(err(&[("lt", "60")]).code(), "4.00");
        assert_eq!(err(&[("ep", "a")]).code(), "4.00");
        assert_eq!(err(&[("ep", "a"), ("lt", "x")]).code(), "4.00");
        assert_eq!(err(&[("ep", "a"), ("lt", "90000")]).code(), "4.00");
        assert_eq!(err(&[("ep", "a/b"), ("lt", "60")]).code(), "4.00");
        assert_eq!(
            err(&[("ep", "a"), ("lt", "60"), ("lwm2m", "2.0")]).code(),
            "4.12"
        );
        assert!(register_params(&q(&[("ep", "a"), ("lt", "60")]), b"</3", &LIMITS).is_err());
    }

    #[test]
    fn register_update_deregister_and_expiry() {
        let t0 = Instant::now();
        let mut r = Registry::new(LIMITS);
        let (reg, replaced) = r
            .register(params("dev1", "60"), addr("10.0.0.1:5000"), t0)
            .unwrap();
        assert_eq!(reg.location(), "rd/1");
        assert!(replaced.is_none());
        assert_eq!(
            reg.params.objects().object_list,
            ["/1/0", "/3/0", "/3303/0"]
        );
        assert_eq!(r.at("rd/1").map(|r| &*r.params.ep), Some("dev1"));
        assert!(r.at("rd/x").is_none() && r.at("1").is_none());
        // An update from a new port (NAT) with a new lifetime and object list.
        let updated = r
            .update(
                "rd/1",
                &q(&[("lt", "120")]),
                b"</3/0>,</5/0>",
                addr("10.0.0.1:6000"),
                t0,
            )
            .unwrap()
            .clone();
        assert_eq!(updated.params.lifetime, 120);
        assert_eq!(updated.addr, addr("10.0.0.1:6000"));
        assert_eq!(updated.expires_at, t0 + Duration::from_secs(120));
        let json = registration_json("update", &updated);
        assert_eq!(json["data"]["objectList"], json!(["/3/0", "/5/0"]));
        assert_eq!(json["data"]["sms"], "123");
        assert_eq!(
            r.update("rd/9", &[], b"", addr("10.0.0.1:1"), t0)
                .unwrap_err()
                .code(),
            "4.04"
        );
        assert!(r.expire(t0 + Duration::from_secs(119)).is_empty());
        let gone = r.expire(t0 + Duration::from_secs(120));
        assert_eq!(gone.len(), 1);
        assert!(r.is_empty());
        let (reg, _) = r
            .register(params("dev2", "60"), addr("10.0.0.2:1"), t0)
            .unwrap();
        assert_eq!(
            r.deregister(&reg.location()).unwrap().params.ep,
            "dev2".into()
        );
        assert_eq!(r.deregister(&reg.location()).unwrap_err().code(), "4.04");
    }

    #[test]
    fn a_live_endpoint_name_is_refused_from_another_address_and_replaced_from_its_own() {
        let t0 = Instant::now();
        let mut r = Registry::new(LIMITS);
        r.register(params("dev1", "60"), addr("10.0.0.1:5000"), t0)
            .unwrap();
        assert_eq!(
            r.register(params("dev1", "60"), addr("10.0.0.9:5000"), t0)
                .unwrap_err(),
            RegError::Taken("dev1".into())
        );
        let (again, replaced) = r
            .register(params("dev1", "60"), addr("10.0.0.1:7000"), t0)
            .unwrap();
        assert_eq!(replaced.unwrap().location(), "rd/1");
        assert_eq!(again.location(), "rd/2");
        assert_eq!(
            r.update("rd/1", &[], b"", addr("10.0.0.1:1"), t0)
                .unwrap_err()
                .code(),
            "4.04"
        );
        // Once expired, anyone may take the name.
        let later = t0 + Duration::from_secs(61);
        assert!(r
            .register(params("dev1", "60"), addr("10.0.0.9:1"), later)
            .is_ok());
    }

    #[test]
    fn the_registry_is_bounded_and_the_json_has_emqx_fields_without_secrets() {
        let t0 = Instant::now();
        let mut r = Registry::new(LIMITS);
        for i in 0..3 {
            r.register(params(&format!("d{i}"), "60"), addr("10.0.0.1:1"), t0)
                .unwrap();
        }
        assert_eq!(
            r.register(params("d3", "60"), addr("10.0.0.1:1"), t0)
                .unwrap_err(),
            RegError::Full
        );
        let p = register_params(
            &q(&[
                ("ep", "x"),
                ("lt", "300"),
                ("password", "s3cret"),
                ("Q", ""),
            ]),
            br#"</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>"#,
            &LIMITS,
        )
        .unwrap();
        let mut r = Registry::new(LIMITS);
        let (reg, _) = r.register(p, addr("10.0.0.1:1"), t0).unwrap();
        let json = registration_json("register", &reg);
        assert_eq!(
            json,
            json!({"msgType": "register", "data": {
                "ep": "x", "lt": 300, "lwm2m": "1.0", "b": "U", "Q": "",
                "alternatePath": "/lwm2m", "objectList": ["/3/0"]
            }})
        );
        assert!(reg.params.queue_mode());
    }
}
