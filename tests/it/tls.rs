//! Transport security over loopback with certificates the tests generate:
//! TLS on the gateway, mutual TLS where a fridge's certificate stands in
//! for its token, plaintext refused off loopback, HTTPS webhooks, Flight SQL
//! and the metrics over TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coldstream::server::Server;
use coldstream_pipelines::Payload;
use coldstream_sources::client::{self, ClientError, ClientTls, Session};
use coldstream_sources::convert::encode;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use crate::support::{event, fridge_token};

/// A CA and certificates it signs, as PEM.
pub(crate) struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    pub(crate) fn new() -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Authority { cert: params.self_signed(&key).unwrap(), key }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key.
    pub(crate) fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes the server's certificate and key (and a client CA) and points `config` at them.
fn with_tls(dir: &Path, ca: &Authority, client_ca: Option<&Authority>) -> coldstream::config::Config {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let files = dir.join("tls");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("gateway.pem"), cert).unwrap();
    std::fs::write(files.join("gateway.key"), key).unwrap();
    let mut config = crate::support::config(&dir.join("data"));
    config.tls.cert = Some(files.join("gateway.pem"));
    config.tls.key = Some(files.join("gateway.key"));
    if let Some(client_ca) = client_ca {
        std::fs::write(files.join("fridges-ca.pem"), client_ca.pem()).unwrap();
        config.tls.client_ca = Some(files.join("fridges-ca.pem"));
    }
    config
}

fn trusting(ca: &Authority) -> ClientTls {
    ClientTls { ca: Some(ca.pem().into_bytes()), domain: Some("localhost".into()), identity: None }
}

fn taken(fridge: &str, seq: u64) -> coldstream_sources::proto::Event {
    encode(&event(fridge, seq, 1, Payload::ItemTaken { session_id: "S1".into(), sku: "cola".into(), qty: 1 }))
}

fn code<T>(result: Result<T, ClientError>) -> Option<tonic::Code> {
    match result {
        Err(ClientError::Status(status)) => Some(status.code()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_speaks_tls_and_a_plaintext_or_untrusting_client_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let server = Server::start(&with_tls(dir.path(), &ca, None)).await.unwrap();
    let https = format!("https://127.0.0.1:{}", server.addr().port());
    let channel = client::channel_with(&https, Some(&trusting(&ca))).await.unwrap();
    let mut fridge = Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    fridge.send(1, vec![taken("FR-000001", 1)]).await.unwrap();
    assert_eq!(fridge.ack().await.unwrap().accepted, [1]);
    // Plaintext to a TLS listener, and TLS trusting another CA, both fail.
    let plain = format!("http://127.0.0.1:{}", server.addr().port());
    let plaintext = match client::channel(&plain).await {
        Ok(channel) => Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(plaintext.is_err());
    let stranger = client::channel_with(&https, Some(&trusting(&Authority::new()))).await;
    assert!(stranger.is_err(), "a certificate of an unknown CA is refused");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fridge_certificate_names_its_fridge_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, fridges) = (Authority::new(), Authority::new());
    let server = Server::start(&with_tls(dir.path(), &ca, Some(&fridges))).await.unwrap();
    let https = format!("https://127.0.0.1:{}", server.addr().port());
    let (cert, key) = fridges.issue(&["FR-000001"], ExtendedKeyUsagePurpose::ClientAuth);
    let mutual = ClientTls { identity: Some((cert.into_bytes(), key.into_bytes())), ..trusting(&ca) };
    let channel = client::channel_with(&https, Some(&mutual)).await.unwrap();
    let mut fridge = Session::open(channel.clone(), "FR-000001", "").await.unwrap();
    fridge.send(1, vec![taken("FR-000001", 1)]).await.unwrap();
    assert_eq!(fridge.ack().await.unwrap().accepted, [1]);
    // The certificate proves FR-000001 only.
    assert_eq!(code(Session::open(channel, "FR-000002", "").await), Some(tonic::Code::Unauthenticated));
    // Without a certificate, a fridge still needs its token.
    let tokenless = client::channel_with(&https, Some(&trusting(&ca))).await.unwrap();
    assert_eq!(code(Session::open(tokenless.clone(), "FR-000003", "").await), Some(tonic::Code::Unauthenticated));
    assert!(Session::open(tokenless, "FR-000003", &fridge_token("FR-000003")).await.is_ok());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_an_address_other_than_loopback_is_refused_unless_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = Server::start(&config).await.err().expect("refused");
    assert!(refused.to_string().contains("not loopback"), "{refused}");
    assert!(!dir.path().join("log").exists(), "refused before any file is touched");
    config.tls.allow_plaintext = true;
    let server = Server::start(&config).await.unwrap();
    server.shutdown().await.unwrap();
}

/// An HTTPS receiver on a free loopback port with a certificate for
/// `localhost` signed by `ca`, offering `alpn` in the handshake and
/// speaking whichever HTTP the client chose: each request's version and
/// body go to the channel, and each is answered 204.
async fn https_receiver(
    ca: &Authority,
    alpn: &[&[u8]],
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<(hyper::Version, String)>, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (cert, key) = ca.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
        key.as_bytes(),
    )
    .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let answer = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let version = request.version();
                        let body = axum::body::to_bytes(axum::body::Body::new(request.into_body()), 1 << 20).await?;
                        let _ = seen.send((version, String::from_utf8_lossy(&body).into_owned()));
                        hyper::Response::builder().status(204).body(axum::body::Body::empty()).map_err(axum::Error::new)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    (port, requests, task)
}

/// Webhooks reach an `https://` receiver whose CA is configured, in the
/// HTTP it offers in the TLS handshake: HTTP/1.1 when it offers nothing,
/// HTTP/2 when it offers `h2` (`protocol = "auto"`, the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_over_https_to_a_receiver_whose_ca_is_configured() {
    let offers: [(&[&[u8]], hyper::Version); 2] =
        [(&[], hyper::Version::HTTP_11), (&[b"h2", b"http/1.1"], hyper::Version::HTTP_2)];
    for (alpn, version) in offers {
        let ca = Authority::new();
        let (port, mut requests, receiver) = https_receiver(&ca, alpn).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("receiver-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let toml = format!(
            "[webhooks.alerts]\nurl = \"https://localhost:{port}/hooks\"\nsecret = \"{}\"\nca_file = {:?}\n",
            coldstream_sinks::webhooks::EXAMPLE_SECRET,
            ca_file.display().to_string()
        );
        let parsed = coldstream::config::Config::parse(&toml, "test").unwrap();
        let mut config = crate::support::config(&dir.path().join("data"));
        config.webhooks = parsed.webhooks;
        let server = Server::start(&config).await.unwrap();
        let addr = format!("http://{}", server.addr());
        let mut fridge = crate::support::session(&addr, "FR-000001").await;
        // A negative on-hand raises an alert.
        fridge.send(1, vec![taken("FR-000001", 1)]).await.unwrap();
        fridge.ack().await.unwrap();
        let (spoken, body) =
            tokio::time::timeout(Duration::from_secs(60), requests.recv()).await.expect("delivered").unwrap();
        assert!(body.contains("inventory.negative"), "{body}");
        assert_eq!(spoken, version, "offered {alpn:?}");
        server.shutdown().await.unwrap();
        receiver.abort();
    }
}

/// The Flight SQL endpoint speaks TLS with the gateway's certificate: a
/// client that trusts its CA queries, a plaintext client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flight_sql_endpoint_speaks_tls_with_the_gateways_certificate() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use coldstream_sources::auth::Principal;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let mut config = with_tls(dir.path(), &ca, None);
    config.flight_sql.enabled = true;
    config.flight_sql.listen = "127.0.0.1:0".parse().unwrap();
    let server = coldstream::server::Server::start(&config).await.unwrap();
    let addr = server.flight_sql_addr().expect("enabled");
    let token = crate::support::tokens().issue(&Principal::Analyst("ana".into()));

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    let channel =
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {token}"));
    let info = client.execute("SELECT 1 AS one".into(), None).await.unwrap();
    assert_eq!(info.endpoint.len(), 1);

    let plaintext = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_header("authorization", format!("Bearer {token}"));
        assert!(client.execute("SELECT 1".into(), None).await.is_err(), "plaintext was answered");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_and_the_status_page_speak_tls_with_the_gateways_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let mut config = with_tls(dir.path(), &ca, None);
    config.metrics = coldstream::config::MetricsSection { enabled: true, listen: "127.0.0.1:0".parse().unwrap() };
    let server = Server::start(&config).await.unwrap();
    let addr = server.metrics_addr().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let get = |path: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let scrape = get("/metrics").await;
    assert!(scrape.starts_with("HTTP/1.0 200") || scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("# TYPE coldstream_gateway_events_accepted_total counter"));
    assert!(get("/").await.contains("<title>coldstream status</title>"));

    // Plain HTTP gets no page: the listener only speaks TLS.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("coldstream_"), "metrics served in clear");

    // Off loopback without TLS, the config is refused.
    let mut open = crate::support::config(&dir.path().join("other"));
    open.metrics = coldstream::config::MetricsSection { enabled: true, listen: "0.0.0.0:0".parse().unwrap() };
    let refused = Server::start(&open).await.err().expect("refused").to_string();
    assert!(refused.contains("metrics.listen") && refused.contains("not loopback"), "{refused}");
    server.shutdown().await.unwrap();
}
