//! A throwaway PKI for TLS tests, made with the `openssl` CLI in a temp dir: a CA, a server
//! certificate for `IP:127.0.0.1` and `DNS:localhost`, and a client certificate whose CN is
//! `holdfast-client` (with a `DNS:client.local` SAN), all P-256.
//!
//! Owns only file generation; it never starts a process other than `openssl`.

use crate::run_with_timeout;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// PEM files of the test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (signs both the server and the client).
    pub ca: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate (CN `holdfast-client`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// The CN of [`Pki::client_cert`].
pub const CLIENT_CN: &str = "holdfast-client";

fn openssl(dir: &Path, args: &[&str]) {
    let (ok, out, err) = run_with_timeout(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(30),
    );
    assert!(ok, "openssl {args:?} failed: {out}{err}");
}

/// Generates the PKI into `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    make_pki_with_client(dir, CLIENT_CN)
}

/// Generates the PKI into `dir`, the client certificate with CN `client_cn` (a bridge test
/// names the gateway by it, as mosquitto's `use_identity_as_username` will).
pub fn make_pki_with_client(dir: &Path, client_cn: &str) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=holdfast-test-ca",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            client_cn,
            "subjectAltName=DNS:client.local\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext file");
        let subj = format!("/CN={cn}");
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", &subj];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
    Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// Which kind of signing key [`make_key_pair`] generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 (for RS256/PS256 tokens).
    Rsa,
    /// ECDSA on P-256 (for ES256 tokens).
    P256,
}

/// Generates a key pair into `dir` as `{name}.key` (PKCS#8 PEM private key) and `{name}.pub`
/// (SubjectPublicKeyInfo PEM); returns their paths (private, public).
pub fn make_key_pair(dir: &Path, name: &str, kind: KeyKind) -> (PathBuf, PathBuf) {
    let (key, public) = (format!("{name}.key"), format!("{name}.pub"));
    let opts: [&str; 4] = match kind {
        KeyKind::Rsa => ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        KeyKind::P256 => ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    let mut gen = vec!["genpkey"];
    gen.extend(opts);
    gen.extend(["-out", &key]);
    openssl(dir, &gen);
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    (dir.join(key), dir.join(public))
}
