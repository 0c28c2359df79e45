//! Feeds arbitrary text to the ACL file parser (`Acl::parse`) and checks whatever compiles
//! against a client. Must never panic: a bad file is an `AclError`.
#![no_main]

use holdfast::auth::acl::{Acl, Action, ClientIdentity, Permission};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(acl) = Acl::parse(text, Path::new("fuzz.acl"), Permission::Deny) else {
        return;
    };
    let acl = Arc::new(acl);
    let client = ClientIdentity {
        client_id: "dev-1",
        username: Some("alice"),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
    };
    let view = acl.for_client(&client);
    for topic in ["a/b", "devices/dev-1/up", "$SYS/x", "#", "+/alice/#", ""] {
        let _ = view.check(Action::Publish, topic);
        let _ = view.check(Action::Subscribe, topic);
    }
});
