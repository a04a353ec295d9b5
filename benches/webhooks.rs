//! Webhook delivery, measured on loopback:
//!
//! 1. how many deliveries per second one endpoint sustains, signed and
//!    verified by a `coldstream receive` receiver, with many keys (16, 64
//!    and 256 in flight, over HTTP/1.1 and over cleartext HTTP/2) and with
//!    a single key (strictly one after the other);
//! 2. a one-hour receiver outage in accelerated time: a fleet sends an hour
//!    of events as fast as it can while the receivers are down; then the
//!    outbox on disk, the pending deliveries and the process memory are
//!    printed, the receivers come back, and the time to drain is printed.
//!
//! `cargo bench --bench webhooks -- [deliveries] [fridges]` (defaults
//! 20000 deliveries, 500 fridges: about 82,500 events for the hour).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coldstream::config::{Config, DEV_SECRET, EndpointSection};
use coldstream::server::Server;
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::webhooks::deliver::dispatch;
use coldstream_sinks::webhooks::receiver::{Keep, Receiver};
use coldstream_sinks::webhooks::{
    DeadLetter, EXAMPLE_SECRET, Endpoint, EndpointConfig, Message, Outbox, Protocol, RetryPolicy, Secret,
};
use coldstream_sources::simulator::{self as simulate, RunSpec};

fn secret() -> Secret {
    Secret::parse(EXAMPLE_SECRET).expect("the example secret parses")
}

/// Delivers `count` messages spread over `keys` keys, `in_flight` at once
/// in `protocol`; returns deliveries/s.
async fn sustained(count: usize, keys: usize, in_flight: usize, protocol: Protocol) -> f64 {
    let receiver =
        Receiver::start("127.0.0.1:0".parse().expect("address"), secret(), Keep::Everything).await.expect("receiver");
    let dir = tempfile::tempdir().expect("temporary directory");
    let messages: Vec<Arc<Message>> = (0..count)
        .map(|n| {
            let body = format!(
                r#"{{"type":"payment.settled","timestamp":"2026-01-01T00:00:00.000Z","data":{{"session_id":"S{n:07}","captured_cents":420}}}}"#
            );
            Arc::new(Message {
                id: format!("msg_{n:032x}"),
                endpoint: Endpoint::Accounting,
                key: format!("FR-{:06}", n % keys),
                kind: "payment.settled".into(),
                time: n as u64,
                body,
            })
        })
        .collect();
    let mut outbox = Outbox::open(&dir.path().join("webhooks")).expect("outbox");
    outbox.enqueue(&messages, count as u64).expect("enqueue");
    let outbox = Arc::new(Mutex::new(outbox));
    let config = EndpointConfig {
        url: format!("http://{}/hooks", receiver.addr()).parse().expect("url"),
        secret: secret(),
        timeout: Duration::from_secs(10),
        max_in_flight: in_flight,
        ca: None,
        every_update: false,
        protocol,
    };
    let dead_letter = Arc::new(DeadLetter::new(dir.path(), ParquetConfig::default()));
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    drop(send);
    let started = Instant::now();
    dispatch(Endpoint::Accounting, config, RetryPolicy::default(), outbox, dead_letter, receive, Default::default())
        .await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    assert_eq!(receiver.received().len(), count, "every delivery verified");
    receiver.stop().await;
    rate
}

async fn outage(fridges: usize) {
    // Pick three free ports, then leave them closed: the receivers are down.
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        addrs.push(probe.local_addr().expect("address"));
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::loopback(dir.path(), 2);
    config.webhooks.retry_max_ms = 1_000;
    config.webhooks.breaker_open_ms = 1_000;
    for (endpoint, addr) in Endpoint::ALL.into_iter().zip(&addrs) {
        let section = EndpointSection {
            url: format!("http://{addr}/{}", endpoint.as_str()),
            secret: EXAMPLE_SECRET.into(),
            timeout_ms: 10_000,
            max_in_flight: EndpointConfig::DEFAULT_MAX_IN_FLIGHT,
            ca_file: None,
            every_update: false,
            protocol: Protocol::Auto,
        };
        *config.webhooks.endpoint_mut(endpoint) = Some(section);
    }
    let server = Server::start(&config).await.expect("server");
    let events = fridges as u64 * 165;
    let now_us = chrono::Utc::now().timestamp_micros();
    let spec = FleetSpec {
        seed: 3,
        fridges,
        events,
        start_us: FleetSpec::start_before(now_us, fridges, events),
        bad_rate: 0.0,
        skus: None,
    };
    let run = RunSpec {
        target: format!("http://{}", server.addr()),
        tokens: coldstream_sources::auth::Tokens::new(DEV_SECRET),
        tls: None,
        rate: None,
        batch: 500,
        progress: false,
    };
    let rss_before = coldstream::machine::rss_mib().unwrap_or(f64::NAN);
    let started = Instant::now();
    let summary = simulate::run(Fleet::new(&spec), &run, events).await.expect("fleet");
    server.caught_up(Duration::from_secs(600)).await.expect("caught up");
    let outage = started.elapsed();
    let outbox_bytes = std::fs::metadata(dir.path().join("webhooks/outbox.log")).map_or(0, |m| m.len());
    let pending = server.webhooks_pending();
    println!(
        "outage: {fridges} fridges, {} events (about one hour of their traffic) accepted in {:.1} s with every receiver down",
        summary.delivered.accepted,
        outage.as_secs_f64()
    );
    println!(
        "  pending deliveries {pending}, outbox on disk {:.1} MiB ({:.0} bytes per delivery), RSS {rss_before:.0} -> {:.0} MiB",
        outbox_bytes as f64 / (1 << 20) as f64,
        outbox_bytes as f64 / pending.max(1) as f64,
        coldstream::machine::rss_mib().unwrap_or(f64::NAN)
    );
    let mut receivers = Vec::new();
    for addr in &addrs {
        receivers.push(Receiver::start(*addr, secret(), Keep::Everything).await.expect("receiver"));
    }
    let back = Instant::now();
    while server.webhooks_pending() > 0 && back.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered: usize = receivers.iter().map(|r| r.received().len()).sum();
    println!(
        "  receivers back: {delivered} delivered in {:.1} s ({:.0}/s), {} still pending, peak RSS {:.0} MiB",
        back.elapsed().as_secs_f64(),
        delivered as f64 / back.elapsed().as_secs_f64(),
        server.webhooks_pending(),
        coldstream::machine::peak_rss_mib().unwrap_or(f64::NAN)
    );
    server.shutdown().await.expect("shutdown");
    for receiver in receivers {
        receiver.stop().await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let count: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let fridges: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    println!("machine: {}", coldstream::machine::describe());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            for in_flight in [16, 64, 256] {
                let many = sustained(count, 1_000, in_flight, protocol).await;
                println!(
                    "one endpoint, {count} deliveries over 1000 keys, {in_flight} in flight, {}: {many:.0} deliveries/s",
                    protocol.as_str()
                );
            }
        }
        let one = sustained(count / 10, 1, 1, Protocol::Auto).await;
        println!(
            "one endpoint, {} deliveries of a single key (in order, one at a time): {one:.0} deliveries/s",
            count / 10
        );
        outage(fridges).await;
    });
}
