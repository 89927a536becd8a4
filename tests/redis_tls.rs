//! Redis over TLS (PROTOCOL section 13): a fleet through `rediss://` with a private CA, a
//! client certificate when Redis asks for one, and what is refused — another CA, another host
//! name, a plain-text Redis behind a `rediss://` URL — with `/readyz` 503, never a silent
//! fallback to plain text. Certificates are made by the test (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::cluster::RedisCluster;
use common::{free_port, RedisServer, TestServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

/// A CA and what it signed, written as PEM files in a directory of their own.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// A CA; Redis's certificate for `localhost` only (not 127.0.0.1); a client certificate.
    fn make(name: &str) -> Certificates {
        Self::make_for(name, &["localhost"])
    }

    /// [`make`](Self::make), Redis's certificate naming `names`.
    fn make_for(name: &str, names: &[&str]) -> Certificates {
        let dir = std::env::temp_dir().join(format!("fanfare-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (Redis) takes a certificate whose subject is its
        // issuer's for a self-signed one.
        ca.distinguished_name
            .push(DnType::CommonName, "fanfare test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let write = |file: &str, pem: String| std::fs::write(dir.join(file), pem).unwrap();
        write("ca.crt", ca.pem());
        for (who, names) in [
            ("redis", names.iter().map(|n| n.to_string()).collect()),
            ("client", vec!["fanfare".into()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, who);
            let cert = params.signed_by(&key, &ca).unwrap();
            write(&format!("{who}.crt"), cert.pem());
            write(&format!("{who}.key"), key.serialize_pem());
        }
        Certificates { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn machine(url: &str, node: &str, ca: Option<&Path>, client: Option<&Certificates>) -> TestServer {
    let (url, node) = (url.to_string(), node.to_string());
    let ca = ca.map(Path::to_path_buf);
    let client = client.map(|c| (c.file("client.crt"), c.file("client.key")));
    TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.redis_prefix = "tls:".into();
        c.node_id = Some(node);
        c.history_size = 100;
        c.redis_ca = ca;
        if let Some((cert, key)) = client {
            c.redis_cert = Some(cert);
            c.redis_key = Some(key);
        }
    })
}

/// `/readyz` stays 503 for a while: the links never come up.
async fn never_ready(s: &TestServer) {
    for _ in 0..15 {
        let (status, body) = s.get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fleet_through_redis_over_tls_delivers_and_resumes() {
    let certs = Certificates::make("fleet");
    let tls_port = free_port();
    let _redis = RedisServer::with_tls(free_port(), tls_port, &certs.dir, false);
    let url = format!("rediss://localhost:{tls_port}");
    let ca = certs.file("ca.crt");
    let (a, b) = (
        machine(&url, "a", Some(&ca), None),
        machine(&url, "b", Some(&ca), None),
    );
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    let mut c = a.connect("u", &["news"]).await;
    assert_eq!(c.recv_json().await["type"], "connected");
    c.send_json(json!({"type": "subscribe", "channel": "news"}))
        .await;
    let subscribed = c.recv_json().await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    let (status, body) = b
        .post(
            "/publish",
            &json!({"channel": "news", "message": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(c.recv_message().await, json!(1));
    drop(c);
    b.post(
        "/publish",
        &json!({"channel": "news", "message": 2}).to_string(),
    )
    .await;
    // The history read through TLS too.
    let mut back = b.connect("u", &["news"]).await;
    back.recv_json().await;
    back.send_json(
        json!({"type": "subscribe", "channel": "news", "since": {"offset": 1, "epoch": epoch}}),
    )
    .await;
    assert_eq!(back.recv_json().await["recovered"], true);
    assert_eq!(back.recv_message().await, json!(2));
}

#[tokio::test]
async fn a_client_certificate_is_shown_when_redis_asks_for_one() {
    let certs = Certificates::make("clients");
    let tls_port = free_port();
    let _redis = RedisServer::with_tls(free_port(), tls_port, &certs.dir, true);
    let url = format!("rediss://localhost:{tls_port}");
    let ca = certs.file("ca.crt");
    let with = machine(&url, "with", Some(&ca), Some(&certs));
    with.wait_readyz(200).await;
    let without = machine(&url, "without", Some(&ca), None);
    never_ready(&without).await;
}

#[tokio::test]
async fn another_ca_another_host_name_or_plain_text_is_refused_not_fallen_back_from() {
    let certs = Certificates::make("refused");
    let other = Certificates::make("other");
    let (plain_port, tls_port) = (free_port(), free_port());
    let _redis = RedisServer::with_tls(plain_port, tls_port, &certs.dir, false);
    let ca = certs.file("ca.crt");
    // Signed by a CA it was not told to trust.
    let untrusted = machine(
        &format!("rediss://localhost:{tls_port}"),
        "a",
        Some(&other.file("ca.crt")),
        None,
    );
    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = machine(
        &format!("rediss://127.0.0.1:{tls_port}"),
        "b",
        Some(&ca),
        None,
    );
    // A Redis that speaks plain text behind a rediss:// URL.
    let plain = machine(
        &format!("rediss://localhost:{plain_port}"),
        "c",
        Some(&ca),
        None,
    );
    for s in [&untrusted, &wrong_name, &plain] {
        never_ready(s).await;
        // It keeps serving its own clients meanwhile.
        let mut c = s.connect("u", &[]).await;
        assert_eq!(c.recv_json().await["type"], "connected");
    }
    let (_, body) = untrusted.get("/readyz").await;
    assert!(body.contains("Redis unreachable"), "{body}");
}

#[test]
fn tls_settings_that_cannot_work_stop_the_start() {
    let certs = Certificates::make("start");
    let start = |url: &str, ca: PathBuf| {
        let mut config = fanfare::Config::new();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.token_secret = Some("s".into());
        config.api_key = Some("k".into());
        config.redis = Some(url.into());
        config.redis_ca = Some(ca);
        fanfare::Server::start(config).err().map(|e| e.to_string())
    };
    let plain = start("redis://localhost:6379", certs.file("ca.crt")).expect("refused");
    assert!(plain.contains("rediss://"), "{plain}");
    let missing = start("rediss://localhost:6379", certs.file("nothing.crt")).expect("refused");
    assert!(missing.contains("nothing.crt"), "{missing}");
    let garbage = certs.file("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let error = start("rediss://localhost:6379", garbage).expect("refused");
    assert!(error.contains("--redis-ca"), "{error}");
}

#[tokio::test]
async fn a_fleet_through_a_redis_cluster_over_tls() {
    // Nodes are found by address: their certificate names 127.0.0.1.
    let certs = Certificates::make_for("cluster", &["localhost", "127.0.0.1"]);
    let tls_ports = Mutex::new(Vec::new());
    let _cluster = RedisCluster::start_with(|_| {
        let port = free_port();
        tls_ports.lock().unwrap().push(port);
        let file = |name: &str| certs.file(name).to_str().unwrap().to_string();
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            &file("redis.crt"),
            "--tls-key-file",
            &file("redis.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec()
    });
    let seed = tls_ports.lock().unwrap()[0];
    let url = format!("rediss+cluster://127.0.0.1:{seed}");
    let ca = certs.file("ca.crt");
    let (a, b) = (
        machine(&url, "a", Some(&ca), None),
        machine(&url, "b", Some(&ca), None),
    );
    a.wait_readyz(200).await;
    b.wait_readyz(200).await;
    for channel in ["news", "sport", "weather"] {
        let mut c = a.connect("u", &[channel]).await;
        assert_eq!(c.recv_json().await["type"], "connected");
        c.send_json(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(c.recv_json().await["type"], "subscribed");
        let (status, body) = b
            .post(
                "/publish",
                &json!({"channel": channel, "message": channel}).to_string(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(c.recv_message().await, json!(channel));
    }
}
