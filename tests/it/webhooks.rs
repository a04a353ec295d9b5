//! Webhook delivery against a real HTTP receiver on a loopback port that can
//! be told to misbehave: answer 500, hang past the timeout, reset the
//! connection, answer 410, or be down altogether while the pipeline is
//! killed and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coldstream_pipelines::metrics::Registry;
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::webhooks::deliver::{EndpointMetrics, dispatch};
use coldstream_sinks::webhooks::{
    DeadLetter, EXAMPLE_SECRET, Endpoint, EndpointConfig, Message, Outbox, Protocol, RetryPolicy, Secret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use coldstream::config::Config;
use coldstream::server::Server;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sources::simulator::{self as simulate, RunSpec};

use crate::support::{ServerProcess, query_csv};

/// What the receiver does with one attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    Answer(u16),
    /// Waits 5 s before answering (longer than the client's timeout).
    Hang,
    /// Closes the connection with a TCP reset instead of answering.
    Reset,
    /// Answers 410 with a 64 MiB body.
    Flood,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub answered: Behaviour,
}

impl Seen {
    pub fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

type Script = dyn Fn(&Seen, usize) -> Behaviour + Send + Sync;

/// A loopback HTTP/1.1 receiver that follows a script: given a request and
/// how many earlier requests carried the same `webhook-id`, what to do.
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(script: impl Fn(&Seen, usize) -> Behaviour + Send + Sync + 'static) -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        script: impl Fn(&Seen, usize) -> Behaviour + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&seen), Arc::clone(&script)));
                }
            })
        };
        Receiver { addr, seen, task }
    }

    pub fn url(&self) -> hyper::Uri {
        format!("http://{}/hooks", self.addr).parse().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| matches!(s.answered, Behaviour::Answer(200..=299))).collect()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, script: Arc<Script>) {
    let mut buffer = Vec::new();
    loop {
        // One request: headers up to a blank line, then content-length bytes.
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
        let headers: BTreeMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).into_owned();
        buffer.drain(..header_end + length);
        let mut request = Seen { headers, body, answered: Behaviour::Answer(0) };
        let behaviour = {
            let mut seen = seen.lock().unwrap();
            let earlier =
                seen.iter().filter(|s| s.headers.get("webhook-id") == request.headers.get("webhook-id")).count();
            request.answered = script(&request, earlier);
            seen.push(request.clone());
            request.answered
        };
        match behaviour {
            Behaviour::Answer(status) => {
                let text = if status == 410 { "gone for good" } else { "" };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{text}",
                    text.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return;
            }
            Behaviour::Flood => {
                let size = 64 << 20;
                let head = format!("HTTP/1.1 410 X\r\ncontent-length: {size}\r\ncontent-type: text/plain\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1 << 16];
                for _ in 0..size / chunk.len() {
                    // The sender stops reading after what it keeps: writes then fail.
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
            Behaviour::Reset => {
                // A zero linger makes the close a reset; it does not block.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

fn message(key: &str, n: u64) -> Message {
    let body = serde_json::json!({ "type": "inventory.negative", "timestamp": "", "data": { "k": key, "n": n } });
    Message {
        id: format!("msg_{key}{n}"),
        endpoint: Endpoint::Alerts,
        key: key.into(),
        kind: "inventory.negative".into(),
        time: n,
        body: body.to_string(),
    }
}

fn fast_retries(breaker_failures: u32) -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        breaker_failures,
        breaker_open: Duration::from_millis(300),
    }
}

/// Delivers `messages` from a fresh outbox in `dir` until all are done.
async fn deliver_all(dir: &Path, url: hyper::Uri, messages: Vec<Message>, retry: RetryPolicy) -> Outbox {
    deliver_all_in(dir, url, messages, retry, Protocol::Auto).await
}

/// [`deliver_all`] in `protocol`.
async fn deliver_all_in(
    dir: &Path,
    url: hyper::Uri,
    messages: Vec<Message>,
    retry: RetryPolicy,
    protocol: Protocol,
) -> Outbox {
    let mut outbox = Outbox::open(&dir.join("webhooks")).unwrap();
    outbox.enqueue(&messages.into_iter().map(Arc::new).collect::<Vec<_>>(), 1).unwrap();
    let outbox = Arc::new(Mutex::new(outbox));
    let config = EndpointConfig {
        url,
        secret: Secret::parse(EXAMPLE_SECRET).unwrap(),
        timeout: Duration::from_millis(500),
        max_in_flight: 4,
        ca: None,
        every_update: false,
        protocol,
    };
    let dead_letter = Arc::new(DeadLetter::new(dir, ParquetConfig::default()));
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    drop(send);
    let run = dispatch(Endpoint::Alerts, config, retry, Arc::clone(&outbox), dead_letter, receive, Default::default());
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("every delivery ends within 60 s");
    Arc::try_unwrap(outbox).ok().unwrap().into_inner().unwrap()
}

/// `protocol = "http2"` sends every delivery as a stream of one cleartext
/// HTTP/2 connection, in order per key; `auto` and `http1` speak HTTP/1.1
/// to an `http://` URL. The receiver is `coldstream receive`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_sends_deliveries_as_streams_and_auto_speaks_http1_to_plain_http() {
    use coldstream_sinks::webhooks::receiver::{Keep, Receiver as Ours};
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for (protocol, version) in [
        (Protocol::Http2, hyper::Version::HTTP_2),
        (Protocol::Auto, hyper::Version::HTTP_11),
        (Protocol::Http1, hyper::Version::HTTP_11),
    ] {
        let secret = Secret::parse(EXAMPLE_SECRET).unwrap();
        let receiver = Ours::start(([127, 0, 0, 1], 0).into(), secret, Keep::Everything).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let messages = (1..=5).flat_map(|n| keys.map(|k| message(k, n))).collect();
        let url = format!("http://{}/alerts", receiver.addr()).parse().unwrap();
        let outbox = deliver_all_in(dir.path(), url, messages, fast_retries(3), protocol).await;
        assert_eq!(outbox.pending().count(), 0, "{protocol:?}: every message done");
        let received = receiver.received();
        assert_eq!(received.len(), 40, "{protocol:?}");
        assert!(received.iter().all(|d| d.version == version && !d.repeat), "{protocol:?}: all in {version:?}, once");
        for key in keys {
            let of_key: Vec<u64> =
                received.iter().filter(|d| d.data["k"] == key).filter_map(|d| d.data["n"].as_u64()).collect();
            assert_eq!(of_key, [1, 2, 3, 4, 5], "{protocol:?}: key {key} in order");
        }
        receiver.stop().await;
    }
}

/// A message whose record in the outbox file was damaged after it was
/// enqueued is not sent and stays pending; it is a local fault, so it does
/// not count against the endpoint's circuit breaker, and every other key
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_unreadable_from_the_outbox_waits_and_the_endpoint_stays_open() {
    let receiver = Receiver::start(|_, _| Behaviour::Answer(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut outbox = Outbox::open(&dir.path().join("webhooks")).unwrap();
    let messages: Vec<Arc<Message>> =
        [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3)].map(|(k, n)| Arc::new(message(k, n))).into();
    outbox.enqueue(&messages, 1).unwrap();
    // a1's record is the file's first: damage a byte of its JSON.
    let path = dir.path().join("webhooks/outbox.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let outbox = Arc::new(Mutex::new(outbox));
    let config = EndpointConfig {
        url: receiver.url(),
        secret: Secret::parse(EXAMPLE_SECRET).unwrap(),
        timeout: Duration::from_secs(5),
        max_in_flight: 1,
        ca: None,
        every_update: false,
        protocol: Protocol::Auto,
    };
    // Three failures in a row would open the circuit for a minute.
    let retry = RetryPolicy { breaker_open: Duration::from_secs(60), ..fast_retries(3) };
    let registry = Registry::default();
    let metrics = EndpointMetrics::register(&registry, Endpoint::Alerts);
    let dead_letter = Arc::new(DeadLetter::new(dir.path(), ParquetConfig::default()));
    let (_send, receive) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher =
        tokio::spawn(dispatch(Endpoint::Alerts, config, retry, Arc::clone(&outbox), dead_letter, receive, metrics));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.delivered().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a1 is tried again and again meanwhile (backoff at most 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    dispatcher.abort();
    let delivered: Vec<(String, u64)> = receiver.delivered().iter().map(key_and_n).collect();
    assert_eq!(delivered, [("b".to_owned(), 1), ("b".to_owned(), 2), ("b".to_owned(), 3)]);
    let value = |name: &str| -> f64 {
        let rendered = registry.render();
        let line = rendered.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {rendered}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("coldstream_webhook_retries_total") >= 3.0, "a1 was tried again");
    assert_eq!(value("coldstream_webhook_breaker_state"), 0.0, "the circuit stayed closed");
    let outbox = outbox.lock().unwrap();
    assert_eq!(outbox.pending().map(|m| m.id()).collect::<Vec<_>>(), ["msg_a1", "msg_a2"]);
}

fn key_and_n(seen: &Seen) -> (String, u64) {
    let json = seen.json();
    (json["data"]["k"].as_str().unwrap().to_owned(), json["data"]["n"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_through_500s_timeouts_and_resets_and_a_410_is_dead_lettered() {
    let receiver = Receiver::start(|request, earlier| {
        let (key, n) = key_and_n(request);
        match (key.as_str(), n, earlier) {
            ("a", 1, 0..=2) => Behaviour::Answer(500),
            ("b", 1, 0) => Behaviour::Hang,
            ("c", 1, 0) => Behaviour::Reset,
            ("d", 1, _) => Behaviour::Answer(410),
            _ => Behaviour::Answer(204),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let messages: Vec<Message> = ["a", "b", "c", "d"].iter().flat_map(|k| (1..=3).map(|n| message(k, n))).collect();
    let outbox = deliver_all(dir.path(), receiver.url(), messages, fast_retries(1_000)).await;
    assert_eq!(outbox.pending_len(), 0);

    // Every message but d1 arrived, each key in order, after its failures.
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seen in receiver.delivered() {
        let (key, n) = key_and_n(&seen);
        order.entry(key).or_default().push(n);
    }
    let expected: BTreeMap<String, Vec<u64>> =
        [("a", vec![1, 2, 3]), ("b", vec![1, 2, 3]), ("c", vec![1, 2, 3]), ("d", vec![2, 3])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(order, expected);

    // a1 was tried four times, always with the same id and a valid signature.
    let secret = Secret::parse(EXAMPLE_SECRET).unwrap();
    let attempts: Vec<Seen> = receiver.seen().into_iter().filter(|s| s.id() == "msg_a1").collect();
    assert_eq!(attempts.len(), 4);
    for attempt in &attempts {
        let header = |name: &str| attempt.headers.get(name).map(String::as_str);
        let now = chrono::Utc::now().timestamp();
        let verified = secret.verify(
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            attempt.body.as_bytes(),
            now,
        );
        assert_eq!(verified, Ok(()));
    }
    assert_eq!(receiver.seen().iter().filter(|s| s.id() == "msg_b1").count(), 2, "a hang, then a retry");
    assert_eq!(receiver.seen().iter().filter(|s| s.id() == "msg_c1").count(), 2, "a reset, then a retry");
    assert_eq!(receiver.seen().iter().filter(|s| s.id() == "msg_d1").count(), 1, "410 is not retried");

    // d1 is in the dead letter, with the answer.
    let failed = query_csv(dir.path(), "SELECT webhook_id, endpoint, type, status, answer FROM webhooks_failed").await;
    assert_eq!(failed, "webhook_id,endpoint,type,status,answer\nmsg_d1,alerts,inventory.negative,410,gone for good\n");
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stops_hammering_a_failing_endpoint_and_probes_it_until_it_recovers() {
    let started = std::time::Instant::now();
    let receiver = Receiver::start(move |_, _| {
        if started.elapsed() < Duration::from_millis(1_500) { Behaviour::Answer(503) } else { Behaviour::Answer(204) }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let messages: Vec<Message> = ["a", "b", "c", "d", "e", "f"].iter().map(|k| message(k, 1)).collect();
    deliver_all(dir.path(), receiver.url(), messages, fast_retries(3)).await;
    let failures = receiver.seen().iter().filter(|s| s.answered == Behaviour::Answer(503)).count();
    assert_eq!(receiver.delivered().len(), 6);
    // Six keys retrying every 20-200 ms for 1.5 s would make dozens of
    // attempts; the breaker allows 3, then one probe per 300 ms.
    assert!(failures <= 3 + 4 + 6, "{failures} failed attempts reached the endpoint");
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_standardwebhooks_library_verifies_a_delivery() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install standardwebhooks (python3 -m pip install standardwebhooks)"
        );
        eprintln!("skipped: the standardwebhooks package is not installed (python3 -m pip install standardwebhooks)");
        return;
    }
    let receiver = Receiver::start(|_, _| Behaviour::Answer(204)).await;
    let dir = tempfile::tempdir().unwrap();
    deliver_all(dir.path(), receiver.url(), vec![message("a", 1)], fast_retries(10)).await;
    let seen = receiver.seen().remove(0);
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
print(json.dumps(Webhook(secret).verify(body, headers)))
"#;
    let headers = serde_json::to_string(&seen.headers).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-c", script, EXAMPLE_SECRET, &headers, &seen.body])
        .output()
        .unwrap();
    assert!(output.status.success(), "standardwebhooks refused it: {}", String::from_utf8_lossy(&output.stderr));
    let verified: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verified["data"]["k"], "a");
    receiver.stop();
}

/// A config whose three endpoints all point at `url`, retrying fast.
fn webhook_config(url: &str) -> String {
    let mut toml = String::from(
        "[webhooks]\nretry_initial_ms = 50\nretry_max_ms = 500\nbreaker_failures = 5\nbreaker_open_ms = 500\n",
    );
    for endpoint in ["procurement", "accounting", "alerts"] {
        toml += &format!("[webhooks.{endpoint}]\nurl = \"{url}\"\nsecret = \"{EXAMPLE_SECRET}\"\ntimeout_ms = 2000\n");
    }
    toml
}

/// A loopback address where no receiver listens: the receiver is down.
async fn down_receiver() -> SocketAddr {
    let down = Receiver::start(|_, _| Behaviour::Answer(204)).await;
    let addr = down.addr;
    down.stop();
    addr
}

/// An in-process server in `dir` whose webhooks all go to `url`, with
/// `max_pending` if given.
async fn server_with_webhooks(dir: &Path, url: &str, max_pending: Option<usize>) -> Server {
    let mut toml = webhook_config(url);
    if let Some(max) = max_pending {
        toml = toml.replace("[webhooks]\n", &format!("[webhooks]\nmax_pending = {max}\n"));
    }
    server_with_webhooks_in(dir, &toml).await
}

/// An in-process server in `dir` with the config `toml`.
async fn server_with_webhooks_in(dir: &Path, toml: &str) -> Server {
    let mut config = Config::parse(toml, "test").unwrap();
    config.data_dir = dir.to_path_buf();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.workers = 2;
    config.auth.secret = crate::support::TEST_SECRET.into();
    Server::start(&config).await.unwrap()
}

async fn run_fleet(target: &str, events: u64, rate: Option<f64>) {
    let spec = FleetSpec { seed: 5, fridges: 6, events, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let run = RunSpec {
        target: target.to_owned(),
        tokens: crate::support::tokens(),
        tls: None,
        rate,
        batch: 50,
        progress: false,
    };
    simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
}

/// Waits until `count` stops changing for two seconds (or 120 s pass).
async fn settle(count: impl Fn() -> usize) -> usize {
    let mut last = (count(), std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    last.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_pending_while_the_receiver_is_down_survive_sigkill_and_arrive_in_order_per_key() {
    // The receiver's port is chosen, then nothing listens on it: it is down.
    let addr = down_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("coldstream.toml");
    std::fs::write(&config_path, webhook_config(&format!("http://{addr}/hooks"))).unwrap();
    let data = dir.path().join("data");
    let config_arg = config_path.to_str().unwrap();

    let server = ServerProcess::start_with(&data, &["--config", config_arg], "error");
    run_fleet(&server.addr, 6_000, None).await;
    let outbox = data.join("webhooks").join("outbox.log");
    settle(|| std::fs::metadata(&outbox).map_or(0, |m| m.len() as usize)).await;
    server.kill();

    // Restarted, with the receiver back: everything pending is delivered.
    let server = ServerProcess::start_with(&data, &["--config", config_arg], "error");
    let receiver = Receiver::start_on(addr, |_, _| Behaviour::Answer(204)).await;
    settle(|| receiver.seen().len()).await;
    server.stop();

    // The same log through a server that never crashed, receiver up and
    // every update sent: the messages every change calls for.
    let clean = tempfile::tempdir().unwrap();
    copy_dir(&data.join("log"), &clean.path().join("log"));
    let reference = Receiver::start(|_, _| Behaviour::Answer(204)).await;
    let url = format!("http://{}/hooks", reference.addr);
    let every_update = webhook_config(&url).replace("\ntimeout_ms", "\nevery_update = true\ntimeout_ms");
    let server = server_with_webhooks_in(clean.path(), &every_update).await;
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    settle(|| reference.seen().len()).await;
    server.shutdown().await.unwrap();

    let expected: BTreeMap<String, String> =
        reference.seen().iter().map(|s| (s.id().to_owned(), s.body.clone())).collect();
    let kinds: BTreeSet<String> =
        reference.seen().iter().map(|s| s.json()["type"].as_str().unwrap().to_owned()).collect();
    assert!(kinds.len() >= 4, "the fleet should call for several types: {kinds:?}");
    // Per key (a fridge's orders, a session, an alert).
    let key_of = |s: &Seen| {
        let data = &s.json()["data"];
        let parts = ["fridge_id", "order_id", "session_id", "sku", "start_us"];
        parts.iter().map(|p| data[*p].to_string()).collect::<Vec<_>>().join("/")
    };
    // An update with a later message of its order may be skipped; the
    // restarted server found them all pending at once, so it skips them.
    let mut in_order = reference.seen();
    in_order.sort_by_key(|s| s.json()["timestamp"].as_str().unwrap().to_owned());
    let mut later_of_key = BTreeSet::new();
    let mut optional = BTreeSet::new();
    for seen in in_order.iter().rev() {
        if seen.json()["type"] == "restock.updated" && later_of_key.contains(&key_of(seen)) {
            optional.insert(seen.id().to_owned());
        }
        later_of_key.insert(key_of(seen));
    }
    let received = receiver.seen();
    let delivered: BTreeMap<String, String> = received.iter().map(|s| (s.id().to_owned(), s.body.clone())).collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|(id, _)| !delivered.contains_key(*id) && !optional.contains(*id))
        .map(|(_, b)| b)
        .collect();
    assert!(missing.is_empty(), "every change delivered at least once; missing {missing:?}");
    for seen in &received {
        assert_eq!(seen.body, expected[seen.id()], "same ids, same bodies; a repeat carries the same id and body");
    }
    let skipped = optional.iter().filter(|id| !delivered.contains_key(*id)).count();
    assert!(optional.is_empty() || skipped > 0, "of {} superseded updates none was skipped", optional.len());
    eprintln!("{} messages due, {} superseded updates, {skipped} of them skipped", expected.len(), optional.len());
    // First arrivals per key in logical-time order.
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for seen in &received {
        if ids.insert(seen.id().to_owned()) {
            first.entry(key_of(seen)).or_default().push(seen.json()["timestamp"].as_str().unwrap().to_owned());
        }
    }
    for (key, times) in first {
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{key} out of order: {times:?}");
    }
    receiver.stop();
    reference.stop();
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_slows_ingestion_instead_of_dropping_and_catches_up_when_the_receiver_returns() {
    let addr = down_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_webhooks(dir.path(), &format!("http://{addr}/hooks"), Some(40)).await;
    let target = format!("http://{}", server.addr());
    let fleet = tokio::spawn(async move { run_fleet(&target, 20_000, Some(2_000.0)).await });

    // The outbox fills up: the gateway holds the fleet's batches.
    let mut stalled_at = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = server.status().durable_offset;
        tokio::time::sleep(Duration::from_millis(800)).await;
        if server.status().durable_offset == before && before > 0 {
            stalled_at = Some(before);
            break;
        }
    }
    let stalled_at = stalled_at.expect("ingestion should stall while the outbox is full");
    assert!(!fleet.is_finished(), "the fleet is held, not refused");
    assert!(stalled_at < 20_000, "ingestion stalled at {stalled_at} events");

    // The receiver comes back: the backlog drains and ingestion resumes.
    let receiver = Receiver::start_on(addr, |_, _| Behaviour::Answer(204)).await;
    tokio::time::timeout(Duration::from_secs(120), fleet).await.expect("the fleet finishes").unwrap();
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    let delivered = settle(|| receiver.seen().len()).await;
    assert!(server.status().durable_offset > stalled_at);
    assert!(delivered > 200, "{delivered} deliveries");
    let unique: BTreeSet<String> = receiver.seen().iter().map(|s| s.id().to_owned()).collect();
    assert_eq!(unique.len(), delivered, "nothing sent twice without a failure");
    server.shutdown().await.unwrap();
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_receiver_accepts_signed_deliveries_and_refuses_a_wrong_signature() {
    let receiver = coldstream_sinks::webhooks::receiver::Receiver::start(
        "127.0.0.1:0".parse().unwrap(),
        Secret::parse(EXAMPLE_SECRET).unwrap(),
        coldstream_sinks::webhooks::receiver::Keep::Everything,
    )
    .await
    .unwrap();
    let url: hyper::Uri = format!("http://{}/alerts", receiver.addr()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    deliver_all(dir.path(), url.clone(), vec![message("a", 1), message("a", 2)], fast_retries(10)).await;
    let received = receiver.received();
    assert_eq!(received.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["msg_a1", "msg_a2"]);
    assert_eq!(received[0].kind, "inventory.negative");
    assert_eq!(received[0].data["k"], "a");

    // Signed with another secret: refused with 401, a permanent failure.
    let other = tempfile::tempdir().unwrap();
    let mut outbox = Outbox::open(&other.path().join("webhooks")).unwrap();
    outbox.enqueue(&[Arc::new(message("b", 1))], 1).unwrap();
    let config = EndpointConfig {
        url,
        secret: Secret::parse("whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0").unwrap(),
        timeout: Duration::from_millis(500),
        max_in_flight: 1,
        ca: None,
        every_update: false,
        protocol: Protocol::Auto,
    };
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    drop(send);
    let dead_letter = Arc::new(DeadLetter::new(other.path(), ParquetConfig::default()));
    dispatch(
        Endpoint::Alerts,
        config,
        fast_retries(10),
        Arc::new(Mutex::new(outbox)),
        dead_letter,
        receive,
        Default::default(),
    )
    .await;
    let failed = query_csv(other.path(), "SELECT webhook_id, status, answer FROM webhooks_failed").await;
    assert_eq!(failed, "webhook_id,status,answer\nmsg_b1,401,no signature matches\n");
    assert_eq!(receiver.received().len(), 2);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_full_outbox_and_its_receivers_down_still_shuts_down_keeping_everything() {
    let addr = down_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_webhooks(dir.path(), &format!("http://{addr}/hooks"), Some(5)).await;
    let target = format!("http://{}", server.addr());
    let fleet = tokio::spawn(async move { run_fleet(&target, 6_000, None).await });
    let full = settle(|| server.webhooks_pending()).await;
    assert!(full >= 5, "{full} pending");
    tokio::time::timeout(Duration::from_secs(60), server.shutdown()).await.expect("shutdown ends").unwrap();
    fleet.abort();
    let outbox = Outbox::open(&dir.path().join("webhooks")).unwrap();
    assert!(outbox.pending_len() >= full, "what was left is on disk for the next start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_refusal_is_not_read_whole_only_its_first_4_kib_are_kept() {
    let receiver = Receiver::start(|_, _| Behaviour::Flood).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = deliver_all(dir.path(), receiver.url(), vec![message("a", 1)], fast_retries(1_000)).await;
    assert_eq!(outbox.pending_len(), 0);
    let answer = crate::support::query_csv(dir.path(), "SELECT length(answer) AS n, status FROM webhooks_failed").await;
    assert_eq!(answer, "n,status\n4096,410\n");
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_of_an_endpoint_removed_from_the_config_go_to_the_dead_letter_instead_of_holding_ingestion()
{
    let addr = down_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_webhooks(dir.path(), &format!("http://{addr}/hooks"), Some(5)).await;
    let target = format!("http://{}", server.addr());
    let fleet = tokio::spawn(async move { run_fleet(&target, 6_000, None).await });
    let full = settle(|| server.webhooks_pending()).await;
    assert!(full >= 5, "{full} pending");
    tokio::time::timeout(Duration::from_secs(60), server.shutdown()).await.expect("shutdown ends").unwrap();
    fleet.abort();
    let pending = Outbox::open(&dir.path().join("webhooks")).unwrap().pending_len();
    // The operator removes every endpoint: nothing can deliver what is pending.
    let server = Server::start(&crate::support::config(dir.path())).await.unwrap();
    assert_eq!(server.webhooks_pending(), 0);
    let target = format!("http://{}", server.addr());
    tokio::time::timeout(Duration::from_secs(120), run_fleet(&target, 500, None)).await.expect("ingestion is not held");
    server.shutdown().await.unwrap();
    let failed =
        crate::support::query_csv(dir.path(), "SELECT count(*) AS n FROM webhooks_failed WHERE status = 0").await;
    assert_eq!(failed, format!("n\n{pending}\n"));
}
