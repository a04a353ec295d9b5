//! What hostile requests cost the server, measured on loopback against a
//! `coldstream run` process: its resident memory (peak and current, from
//! `/proc`) before and after
//!
//! 1. eight concurrent unauthenticated `Publish` calls of 1.5 million
//!    empty events each (refused from their metadata, bodies never
//!    decoded), and
//! 2. the same eight calls with a valid back-office token (bodies within the
//!    decode limit are decoded, then refused for holding more than
//!    `gateway.max_batch_events` events).
//!
//! `cargo bench --bench hostile` (Linux only: it reads `/proc`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use coldstream_sources::auth::{Principal, Tokens};
use coldstream_sources::proto::{self, fridge_gateway_client::FridgeGatewayClient};

const SECRET: &str = "coldstream-bench-fleet-secret";

/// `VmHWM` and `VmRSS` of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn flood(addr: &str, token: &str) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (addr, token) = (addr.to_owned(), token.to_owned());
        calls.spawn(async move {
            let channel = coldstream_sources::client::channel(&addr).await.expect("connects");
            let mut client = FridgeGatewayClient::new(channel).max_encoding_message_size(usize::MAX);
            let body = proto::PublishRequest {
                source_id: "prices".into(),
                events: vec![proto::Event::default(); 1_500_000],
                incarnation: 0,
            };
            let mut request = tonic::Request::new(body);
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
            match client.publish(request).await {
                Ok(_) => "accepted".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            }
        });
    }
    calls.join_all().await
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut server = Command::new(env!("CARGO_BIN_EXE_coldstream"))
        .args(["run", "--listen", "127.0.0.1:0", "--workers", "1", "--data"])
        .arg(dir.path())
        .env("COLDSTREAM_SECRET", SECRET)
        .env("COLDSTREAM_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts coldstream run");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("the address line");
    let addr = format!("http://{}", line.trim().strip_prefix("coldstream listening on ").expect("the address line"));
    let pid = server.id();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (peak, rss) = memory(pid);
    println!("server at start:                   peak {peak:7.1} MiB, resident {rss:7.1} MiB");
    let answers = runtime.block_on(flood(&addr, "cs1:k1:backoffice:prices:99999999999:00"));
    let (peak, rss) = memory(pid);
    println!("after 8 unauthenticated calls:     peak {peak:7.1} MiB, resident {rss:7.1} MiB  (answers {answers:?})");
    let token = Tokens::new(SECRET).issue(&Principal::BackOffice("prices".into()));
    let answers = runtime.block_on(flood(&addr, &token));
    let (peak, rss) = memory(pid);
    println!("after 8 authenticated calls:       peak {peak:7.1} MiB, resident {rss:7.1} MiB  (answers {answers:?})");
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = server.wait();
}
