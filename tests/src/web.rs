//! The web API's HTTP/1.1 exchanges for the tests (a raw client on loopback, so nothing
//! between the test and the gateway adds or hides a header), logged-in sessions, and a
//! gateway with `[web]` on free ports.

use crate::{free_port, Gateway};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(15);

/// A gateway with MQTT and `[web]` on free loopback ports; returns it and the web port.
pub fn gateway(web_extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let web = free_port();
    let config = format!(
        r#"
[node]
name = "gw-web"

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{port}"

[auth]
allow_anonymous = true

[board]
# The alarm for a nearly full data disk is about the machine running the tests (CI's disk is
# often more than 90% full), not about what these tests check.
disk_free_alarm = 0

[web]
bind = "127.0.0.1:{web}"
{web_extra}
"#
    );
    let gw = Gateway::start_config(&config, port);
    assert!(gw.wait_for_log("web: API listening", WAIT), "{}", gw.log());
    (gw, web)
}

/// One HTTP/1.1 exchange.
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the web port");
    exchange(stream, method, path, headers, body)
}

/// [`http`] from another loopback source address (127.0.0.0/8 is all loopback on Linux).
pub fn http_from(
    source: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    assert!(source.is_loopback(), "loopback only");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from((source, 0)).into())
        .expect("bind the source address");
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect to the web port");
    exchange(socket.into(), method, path, headers, body)
}

fn exchange(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A logged-in session: its cookie header value and its CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

pub fn session_of(reply: &Reply) -> Session {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let set = reply.headers.get("set-cookie").cloned().unwrap_or_default();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    Session {
        cookie: set.split(';').next().unwrap_or_default().to_owned(),
        csrf: reply.json()["csrf"].as_str().unwrap_or_default().to_owned(),
    }
}

pub fn setup(gw: &Gateway, web: u16, password: &str) -> Session {
    let token =
        std::fs::read_to_string(gw.dir.path().join("data/setup-token")).expect("setup token");
    let body = serde_json::json!({"token": token.trim(), "password": password}).to_string();
    session_of(&http(web, "POST", "/api/v1/setup", &[], Some(&body)))
}
