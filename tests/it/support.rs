//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coldstream::config::Config;
use coldstream::query;
use coldstream::server::Server;
use coldstream_pipelines::Event;
use coldstream_sources::auth::{Principal, Tokens};
use coldstream_sources::client::Session;

/// How the tests' simulated fleets send: to `target`, with the tests'
/// tokens, at `rate` events/s (`None`: as fast as acks come), `batch`
/// events a batch, quietly.
pub fn run_spec(target: impl Into<String>, rate: Option<f64>, batch: usize) -> coldstream_sources::simulator::RunSpec {
    coldstream_sources::simulator::RunSpec {
        target: target.into(),
        tokens: tokens(),
        tls: None,
        rate,
        batch,
        progress: false,
    }
}

/// A server configuration for tests: loopback, an ephemeral port, 2 workers.
pub fn config(dir: &Path) -> Config {
    let mut config =
        Config { data_dir: dir.to_path_buf(), listen: "127.0.0.1:0".parse().unwrap(), workers: 2, ..Config::default() };
    config.auth.secret = TEST_SECRET.into();
    config.parquet.roll_seconds = 1;
    config
}

/// Starts a server in this process.
pub async fn start(dir: &Path) -> Server {
    Server::start(&config(dir)).await.unwrap()
}

/// The fleet secret of the tests' servers.
pub const TEST_SECRET: &str = "coldstream-test-fleet-secret";

/// Tokens under the tests' fleet secret.
pub fn tokens() -> Tokens {
    Tokens::new(TEST_SECRET)
}

/// The token of a fridge under the tests' fleet secret.
pub fn fridge_token(fridge_id: &str) -> String {
    tokens().issue(&Principal::Fridge(fridge_id.into()))
}

/// The token of a back-office client under the tests' fleet secret.
pub fn back_office_token(id: &str) -> String {
    tokens().issue(&Principal::BackOffice(id.into()))
}

/// Opens a stream as `fridge_id` with its correct token.
pub async fn session(addr: &str, fridge_id: &str) -> Session {
    let channel = coldstream_sources::client::channel(addr).await.unwrap();
    Session::open(channel, fridge_id, &fridge_token(fridge_id)).await.unwrap()
}

/// A fridge event at `minute` minutes past an hour three hours ago, so that
/// every test event (at most 180 minutes in) lies in the past.
pub fn event(fridge_id: &str, seq: u64, minute: i64, payload: coldstream_pipelines::Payload) -> Event {
    assert!(minute < 180, "test events must stay in the past");
    let base = chrono::Utc::now().timestamp_micros() / 3_600_000_000 * 3_600_000_000 - 3 * 3_600_000_000;
    Event { source_id: fridge_id.into(), incarnation: 0, seq, event_time: base + minute * 60_000_000, payload }
}

/// Runs SQL over a data directory and returns CSV.
pub async fn query_csv(dir: &Path, sql: &str) -> String {
    let ctx = query::context(dir).await.unwrap();
    let batches = query::run(&ctx, sql).await.unwrap();
    query::render(&batches, query::Format::Csv).unwrap()
}

/// The `coldstream` binary.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coldstream"))
}

/// A `coldstream run` process on an ephemeral loopback port.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
}

impl ServerProcess {
    pub fn start(dir: &Path) -> ServerProcess {
        ServerProcess::start_with(dir, &[], "warn")
    }

    /// With extra arguments, e.g. `--config FILE`, and a log filter.
    pub fn start_with(dir: &Path, extra: &[&str], log: &str) -> ServerProcess {
        let mut child = binary()
            .args(["run", "--listen", "127.0.0.1:0", "--workers", "2", "--data"])
            .arg(dir)
            .args(extra)
            .env("COLDSTREAM_SECRET", TEST_SECRET)
            .env("COLDSTREAM_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("coldstream listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}"));
        ServerProcess { addr: format!("http://{addr}"), child }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGINT: the server drains the log into every sink and exits.
    pub fn stop(self) {
        self.stop_with("-INT");
    }

    /// `signal` (`-INT`, `-TERM`): the server drains the log into every
    /// sink, takes a last checkpoint and exits 0.
    pub fn stop_with(mut self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the server exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().unwrap();
        panic!("the server did not stop within 60 s of {signal}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
