//! What operators see: a live scrape of `/metrics` checked by Prometheus's
//! own `promtool` and against what a fleet sent, the status page rendered
//! by headless Chromium, and JSON log lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use coldstream::config::Config;
use coldstream::server::Server;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::webhooks::EXAMPLE_SECRET;
use coldstream_sinks::webhooks::receiver::Receiver;
use coldstream_sources::simulator::{self as simulate, Summary};

use crate::cluster::receiver;
use crate::support::TEST_SECRET;

/// A server in `dir` with metrics on a free loopback port and every
/// endpoint delivering to `receiver`.
async fn server(dir: &Path, receiver: &Receiver) -> Server {
    let mut toml = String::from("[metrics]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    for endpoint in ["procurement", "accounting", "alerts"] {
        toml += &format!(
            "[webhooks.{endpoint}]\nurl = \"http://{}/{endpoint}\"\nsecret = \"{EXAMPLE_SECRET}\"\n",
            receiver.addr()
        );
    }
    let mut config = Config::parse(&toml, "test").unwrap();
    config.data_dir = dir.to_path_buf();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.workers = 2;
    config.auth.secret = TEST_SECRET.into();
    Server::start(&config).await.unwrap()
}

/// Six fridges' events, some of them bad (rejected into the dead letter).
async fn fleet(server: &Server, events: u64) -> Summary {
    let spec = FleetSpec { seed: 19, fridges: 6, events, start_us: 1_772_323_200_000_000, bad_rate: 0.03, skus: None };
    let run = crate::support::run_spec(format!("http://{}", server.addr()), None, 50);
    simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap()
}

/// Waits until the views and the archive have every durable record and
/// the webhooks are all delivered.
async fn settled(server: &Server) {
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while server.webhooks_pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "webhooks still pending after 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last deliveries' counters are updated as their answers come in.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// `GET path` over plain HTTP/1.0; returns the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The samples of a scrape, by `name{labels}` as written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool_and_counts_exactly_what_the_fleet_sent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let server = server(dir.path(), &receiver).await;
    let sent = fleet(&server, 3_000).await;
    settled(&server).await;
    let addr = server.metrics_addr().unwrap();
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);

    // Prometheus's own linter: names, units, `_total`, help, histograms.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by .ci/run)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let s = samples(&text);
    let at = |series: &str| *s.get(series).unwrap_or_else(|| panic!("no {series} in the scrape"));
    let rejected: f64 =
        s.iter().filter(|(k, _)| k.starts_with("coldstream_gateway_events_rejected_total{")).map(|(_, v)| v).sum();
    assert_eq!(at("coldstream_gateway_events_received_total"), sent.sent as f64);
    assert_eq!(at("coldstream_gateway_events_accepted_total"), sent.delivered.accepted as f64);
    assert_eq!(at("coldstream_gateway_events_duplicate_total"), sent.delivered.duplicates as f64);
    assert_eq!(rejected, sent.delivered.rejected as f64);
    assert!(rejected > 0.0, "the fleet sent bad events");
    // Accepted and rejected events are both records of the log.
    let records = (sent.delivered.accepted + sent.delivered.rejected) as f64;
    assert_eq!(at("coldstream_log_durable_records"), records);
    assert_eq!(at("coldstream_log_records_appended_total"), records);
    assert_eq!(at("coldstream_fleet_fridges_known"), 6.0);
    assert_eq!(at("coldstream_gateway_streams_open"), 0.0);
    assert!(at("coldstream_gateway_ack_seconds_count") > 0.0);
    assert!(at("coldstream_log_size_bytes") > 0.0);
    for view in coldstream_pipelines::views::NAMES {
        assert_eq!(at(&format!("coldstream_view_lag_seconds{{view=\"{view}\"}}")), 0.0, "{view} caught up");
        assert_eq!(at(&format!("coldstream_view_lag_records{{view=\"{view}\"}}")), 0.0, "{view} caught up");
    }
    assert!(at("coldstream_view_changes_total{view=\"inventory\"}") > 0.0);
    assert_eq!(at("coldstream_view_unread_records"), 0.0);
    assert_eq!(at("coldstream_archive_lag_records"), 0.0);
    // Every delivery the receiver verified was counted on its endpoint.
    let received = receiver.received();
    for endpoint in ["procurement", "accounting", "alerts"] {
        let delivered = received.iter().filter(|d| endpoint_of(&d.kind) == endpoint).count();
        assert_eq!(at(&format!("coldstream_webhook_delivered_total{{endpoint=\"{endpoint}\"}}")), delivered as f64);
        assert_eq!(at(&format!("coldstream_webhook_pending_messages{{endpoint=\"{endpoint}\"}}")), 0.0);
        assert_eq!(at(&format!("coldstream_webhook_breaker_state{{endpoint=\"{endpoint}\"}}")), 0.0);
    }
    assert!(!received.is_empty());
    assert!(at("process_resident_memory_bytes") > 1e6);
    assert!(at("process_cpu_seconds_total") > 0.0);
    // Every metric the Grafana dashboard plots is in the scrape.
    let (status, dashboard) = get(addr, "/grafana-dashboard.json").await;
    assert_eq!(status, 200);
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut plotted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("coldstream_") || name.starts_with("process_") {
                    let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                    assert!(
                        text.contains(&format!("# TYPE {family} ")),
                        "the dashboard plots {name}, which the scrape lacks"
                    );
                    plotted += 1;
                }
            }
        }
    }
    assert!(plotted > 20, "the dashboard plots the metrics");
    // No fridge id is ever a label: the set of series does not grow with the fleet.
    assert!(!text.contains("FR-"), "a fridge id in a label");
    server.shutdown().await.unwrap();
}

/// A Prometheus server (Debian's `prometheus`) scraping `target` every
/// second, on a free loopback port; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: coldstream\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package, installed by .ci/run)");
        Prometheus { child, addr, _dir: dir }
    }

    /// The value of an instant query's only sample, once it has one.
    async fn query(&self, query: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let path = format!(
            "/api/v1/query?query={}",
            query.replace(' ', "%20").replace('"', "%22").replace('{', "%7B").replace('}', "%7D").replace('+', "%2B")
        );
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes()).await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server_and_answers_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let server = server(dir.path(), &receiver).await;
    let sent = fleet(&server, 2_000).await;
    settled(&server).await;
    let prometheus = Prometheus::start(server.metrics_addr().unwrap());
    let registry = server.registry();
    let expected = [
        ("up{job=\"coldstream\"}", 1.0),
        ("coldstream_gateway_events_accepted_total", sent.delivered.accepted as f64),
        ("sum(coldstream_gateway_events_rejected_total)", sent.delivered.rejected as f64),
        ("coldstream_fleet_fridges_known", 6.0),
        ("sum(coldstream_webhook_delivered_total)", registry.sum("coldstream_webhook_delivered_total")),
        ("max(coldstream_view_lag_seconds)", 0.0),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    for (query, value) in expected {
        loop {
            match prometheus.query(query).await {
                Some(got) if got == value => break,
                got => {
                    assert!(std::time::Instant::now() < deadline, "{query}: Prometheus says {got:?}, not {value}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    // The histograms are usable as they are, e.g. the ack latency's p99.
    let p99 = prometheus
        .query("histogram_quantile(0.99, sum by (le) (coldstream_gateway_ack_seconds_bucket))")
        .await
        .expect("a p99 of the ack latency");
    assert!(p99 > 0.0 && p99 <= 60.0, "{p99}");
    drop(prometheus);
    server.shutdown().await.unwrap();
}

/// Which endpoint receives messages of `kind` (`DOMAIN.md`).
fn endpoint_of(kind: &str) -> &'static str {
    if kind.starts_with("restock.") {
        "procurement"
    } else if kind.starts_with("payment.") {
        "accounting"
    } else {
        "alerts"
    }
}

/// The value of the element with `id` in a rendered page (`data-value`).
fn rendered(dom: &str, id: &str) -> f64 {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let element = &dom[at..at + dom[at..].find('>').unwrap()];
    let value = element.split("data-value=\"").nth(1).unwrap_or_else(|| panic!("#{id} has no value: {element}"));
    value[..value.find('"').unwrap()].parse().unwrap()
}

/// The `data-value` of the `column`th cell of the row with `attr`.
fn cell(dom: &str, attr: &str, column: usize) -> f64 {
    let at = dom.find(attr).unwrap_or_else(|| panic!("no row {attr} in the page"));
    let row = &dom[at..at + dom[at..].find("</tr>").unwrap()];
    let td = row.split("<td").nth(column + 1).unwrap();
    let value = td.split("data-value=\"").nth(1).unwrap();
    value[..value.find('"').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_status_page_with_the_numbers_of_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let server = server(dir.path(), &receiver).await;
    fleet(&server, 2_000).await;
    settled(&server).await;
    let url = format!("http://{}/", server.metrics_addr().unwrap());
    let profile = tempfile::tempdir().unwrap();
    let chromium = |extra: &[&str]| {
        let output = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=4000", "--window-size=1400,1000"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium (Debian's chromium package, installed by .ci/run)");
        assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    let dom = String::from_utf8(tokio::task::block_in_place(|| chromium(&["--dump-dom"]))).unwrap();
    assert!(dom.contains("data-refreshes"), "the page never drew its data:\n{dom}");

    let registry = server.registry();
    let metric = |name: &str, labels: &[(&str, &str)]| registry.value(name, labels).unwrap();
    assert_eq!(rendered(&dom, "fridges-known"), metric("coldstream_fleet_fridges_known", &[]));
    assert_eq!(rendered(&dom, "accepted-total"), metric("coldstream_gateway_events_accepted_total", &[]));
    assert_eq!(rendered(&dom, "rejected-total"), registry.sum("coldstream_gateway_events_rejected_total"));
    assert_eq!(rendered(&dom, "log-records"), metric("coldstream_log_durable_records", &[]));
    assert_eq!(rendered(&dom, "archive-lag"), 0.0);
    for view in coldstream_pipelines::views::NAMES {
        let row = format!("data-view=\"{view}\"");
        assert_eq!(cell(&dom, &row, 1), 0.0, "{view}'s lag");
        assert_eq!(cell(&dom, &row, 2), 0.0, "{view}'s records behind");
        assert_eq!(cell(&dom, &row, 3), metric("coldstream_view_changes_total", &[("view", view)]), "{view}");
    }
    for endpoint in ["procurement", "accounting", "alerts"] {
        let row = format!("data-endpoint=\"{endpoint}\"");
        let delivered = metric("coldstream_webhook_delivered_total", &[("endpoint", endpoint)]);
        assert_eq!(cell(&dom, &row, 3), delivered, "{endpoint} delivered");
        assert_eq!(cell(&dom, &row, 1), 0.0, "{endpoint} pending");
    }
    assert!(dom.contains("closed"), "breakers shown closed");
    assert!(rendered(&dom, "open-orders") >= 0.0);

    // A screenshot of the page, kept beside the test's other output.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    tokio::task::block_in_place(|| chromium(&[&format!("--screenshot={}", shot.display())]));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page");
    println!("status page screenshot: {}", shot.display());
    server.shutdown().await.unwrap();
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = crate::support::binary()
        .args(["run", "--log-format", "json", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("COLDSTREAM_SECRET", TEST_SECRET)
        .env("COLDSTREAM_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("coldstream listening on "), "{line:?}");
    let stopped = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(child.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    let mut running = false;
    for line in stderr.lines().filter(|line| !line.is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some_and(|v| v.is_string()), "{field} in {line}");
        }
        if event["message"] == "coldstream is running" {
            // The event's own fields sit beside the message.
            assert_eq!(event["role"], "All", "{line}");
            running = true;
        }
    }
    assert!(running, "no `coldstream is running` line in:\n{stderr}");
}

/// An OTLP/gRPC collector on a loopback port that keeps what it receives.
mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.0.lock().unwrap().push(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// Serves until the returned sender is dropped.
    pub async fn start() -> (Collector, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (collector, addr, stop)
    }
}

/// One received span: its name, ids and attributes as text.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

fn spans_of(requests: &[opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest]) -> Vec<Span> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    };
    let mut spans = Vec::new();
    for request in requests {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name").map(|kv| text(&kv.value)));
            assert_eq!(service.as_deref(), Some("coldstream"), "the spans' service.name");
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    spans.push(Span {
                        name: span.name.clone(),
                        trace: span.trace_id.clone(),
                        id: span.span_id.clone(),
                        parent: span.parent_span_id.clone(),
                        attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                    });
                }
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_is_followed_over_otlp_from_the_gateway_through_the_log_and_the_views_to_its_webhook() {
    let (collector, collector_addr, stop_collector) = collector::start().await;
    let receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!("[tracing]\notlp_endpoint = \"http://{collector_addr}\"\nsample_ratio = 1.0\n");
    for endpoint in ["procurement", "accounting", "alerts"] {
        toml += &format!(
            "[webhooks.{endpoint}]\nurl = \"http://{}/{endpoint}\"\nsecret = \"{EXAMPLE_SECRET}\"\n",
            receiver.addr()
        );
    }
    let config = dir.path().join("coldstream.toml");
    std::fs::write(&config, toml).unwrap();
    let data = dir.path().join("data");
    let server = tokio::task::block_in_place(|| {
        crate::support::ServerProcess::start_with(&data, &["--config", config.to_str().unwrap()], "warn")
    });
    let spec =
        FleetSpec { seed: 4, fridges: 3, events: 1_500, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let run = crate::support::run_spec(server.addr.clone(), None, 100);
    simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no webhook delivered within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A clean stop sends the spans still buffered.
    tokio::task::block_in_place(|| server.stop());
    let delivered: Vec<String> = receiver.received().iter().map(|d| d.id.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = spans_of(&collector.0.lock().unwrap());
        if spans.iter().any(|s| s.name == "webhook.attempt" && delivered.contains(&s.attributes["webhook_id"])) {
            break spans;
        }
        assert!(std::time::Instant::now() < deadline, "no span of a delivered webhook reached the collector");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(stop_collector);

    // Walk one delivered webhook's attempt up to the batch that caused it.
    let by_id = |id: &[u8]| spans.iter().find(|s| s.id == id).cloned();
    let attempt = spans
        .iter()
        .find(|s| s.name == "webhook.attempt" && delivered.contains(&s.attributes["webhook_id"]))
        .unwrap()
        .clone();
    assert_eq!(attempt.attributes["outcome"], "delivered");
    let mut path = vec![attempt.clone()];
    while let Some(parent) = by_id(&path.last().unwrap().parent) {
        path.push(parent);
    }
    let names: Vec<&str> = path.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["webhook.attempt", "webhook.pending", "views.pending", "log.commit", "gateway.batch"]);
    assert!(path.iter().all(|s| s.trace == attempt.trace), "one trace");
    let (pending, views, commit, batch) = (&path[1], &path[2], &path[3], &path[4]);
    assert_eq!(pending.attributes["webhook_id"], attempt.attributes["webhook_id"]);
    assert_eq!(pending.attributes["outcome"], "delivered");
    assert_eq!(views.attributes["ingest_ms"], commit.attributes["ingest_ms"]);
    let source = &batch.attributes["source"];
    assert!(
        ["FR-000001", "FR-000002", "FR-000003"].contains(&source.as_str()) || source.starts_with("backoffice/"),
        "{source}"
    );
    assert!(batch.attributes["events"].parse::<u64>().unwrap() > 0);
    assert_eq!(batch.parent, Vec::<u8>::new(), "the batch is the root");
    // Every followed batch has its own trace from the gateway on.
    let roots = spans.iter().filter(|s| s.name == "gateway.batch").count();
    assert!(roots >= 15, "every batch followed at sample_ratio 1: {roots}");
}
