//! The web API against its own OpenAPI document: schemathesis (PyPI) generates requests from
//! `/api/v1/openapi.json` (examples, boundary values, random data, and sequences that follow
//! the links between operations) and sends them to the built binary with an API token. Every
//! answer must be documented (status, content type, body schema), a request outside the
//! document must be refused, no route may answer 5xx or crash the gateway, and a route that
//! needs credentials must refuse a request without them.
//!
//! Left out of the run: `POST /api/v1/config/apply` (a good random config restarts the
//! gateway on it; tests/tests/web_config.rs covers it), `DELETE /api/v1/tokens/{id}` (the run
//! would revoke its own token; tests/tests/web.rs covers it), and the
//! `positive_data_acceptance` check: the API checks meaning the schema cannot say (a config's
//! content, an IP network, a token name without control characters) and refuses those with
//! 400 or 422 on purpose.

use holdfast_tests::web::{gateway, http, setup, WAIT};
use holdfast_tests::{free_udp_port, MosquittoSub};
use std::process::Command;

#[test]
fn every_route_answers_as_its_openapi_document_says() {
    let coap = free_udp_port();
    let lwm2m = free_udp_port();
    let extra =
        format!("\n[coap]\nbind = \"127.0.0.1:{coap}\"\n\n[lwm2m]\nbind = \"127.0.0.1:{lwm2m}\"\n");
    let (mut gw, web) = gateway(&extra);
    let _client = MosquittoSub::start(gw.port, "a/#", &["-i", "schema-client"]);
    let session = setup(&gw, web, "a long admin password");
    let made = http(
        web,
        "POST",
        "/api/v1/tokens",
        &[("Cookie", &session.cookie), ("X-CSRF-Token", &session.csrf)],
        Some(r#"{"name":"schemathesis","scope":"admin"}"#),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let token = made.json()["token"].as_str().expect("token").to_owned();
    let document = http(web, "GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(document.status, 200);
    assert_eq!(document.json()["openapi"], "3.1.0");

    // Its cache and reports go to a directory of its own, never into the tree.
    let scratch = holdfast_tests::TempDir::new("schemathesis");
    let out = Command::new("schemathesis")
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("http://127.0.0.1:{web}/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--exclude-path", "/api/v1/config/apply"])
        .args(["--exclude-path-regex", "^/api/v1/tokens/"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", "40", "--seed", "20261206"])
        .args(["--wait-for-schema", &WAIT.as_secs().to_string()])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis (pip install schemathesis; scripts/test-all.sh does it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("passed"), "{report}");
    assert!(gw.is_running(), "the gateway died:\n{}", gw.log());
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
