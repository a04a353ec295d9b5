//! The Fluvio log against a real Fluvio cluster on loopback.
//!
//! A cluster is found in one of two places (see the README's "The Fluvio
//! log"): `COLDSTREAM_FLUVIO=host:port`, a running cluster's controller; or
//! a `fluvio-run` binary (`COLDSTREAM_FLUVIO_RUN`, else on `PATH`), from
//! which the test starts a controller and one SPU on free loopback ports,
//! and stops them at the end. Without either, or in a build without the
//! `fluvio` feature, each test prints one line saying it was skipped.

#[cfg(not(feature = "fluvio"))]
#[test]
fn the_fluvio_log_passes_the_conformance_suite_against_a_real_cluster() {
    eprintln!(
        "skipped: the Fluvio log tests need `cargo test --features fluvio` and a Fluvio cluster (README: \"The Fluvio log\")"
    );
}

#[cfg(feature = "fluvio")]
pub(crate) mod cluster {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fluvio::metadata::customspu::CustomSpuSpec;
    use fluvio::{Fluvio, FluvioClusterConfig};

    /// A Fluvio cluster to test against: one already running, or one this
    /// test started (and stops when dropped).
    pub(crate) struct TestCluster {
        pub(crate) endpoint: String,
        children: Vec<Child>,
        _dir: Option<tempfile::TempDir>,
    }

    impl Drop for TestCluster {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn fluvio_run() -> Option<PathBuf> {
        if let Ok(path) = std::env::var("COLDSTREAM_FLUVIO_RUN") {
            return Some(PathBuf::from(path));
        }
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| PathBuf::from(dir).join("fluvio-run"))
            .find(|p| p.is_file())
    }

    /// The cluster, or `None` (and one line saying so) when there is none.
    pub(crate) fn find(test: &str) -> Option<TestCluster> {
        if let Ok(endpoint) = std::env::var("COLDSTREAM_FLUVIO") {
            return Some(TestCluster { endpoint, children: Vec::new(), _dir: None });
        }
        let Some(binary) = fluvio_run() else {
            eprintln!(
                "skipped {test}: no Fluvio cluster (set COLDSTREAM_FLUVIO=host:port, or COLDSTREAM_FLUVIO_RUN or PATH to a fluvio-run binary)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (public, private, spu_public, spu_private) = (free_port(), free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let sc = Command::new(&binary)
            .args(["sc", "--local"])
            .arg(dir.path().join("sc"))
            .args(["--bind-public", &format!("127.0.0.1:{public}"), "--bind-private", &format!("127.0.0.1:{private}")])
            .stdout(Stdio::null())
            .stderr(log("sc.log"))
            .spawn()
            .unwrap();
        let mut cluster = TestCluster { endpoint: format!("127.0.0.1:{public}"), children: vec![sc], _dir: None };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let fluvio = loop {
                match Fluvio::connect_with_config(&FluvioClusterConfig::new(cluster.endpoint.clone())).await {
                    Ok(fluvio) => break fluvio,
                    Err(error) if Instant::now() > deadline => panic!("the Fluvio controller did not come up: {error}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let spec = CustomSpuSpec {
                id: 5001,
                public_endpoint: fluvio_controlplane_metadata::spu::IngressPort {
                    port: spu_public,
                    ingress: vec![fluvio_controlplane_metadata::spu::IngressAddr::from_ip("127.0.0.1".into())],
                    encryption: Default::default(),
                },
                private_endpoint: fluvio_controlplane_metadata::spu::Endpoint {
                    port: spu_private,
                    host: "127.0.0.1".into(),
                    encryption: Default::default(),
                },
                rack: None,
                public_endpoint_local: None,
            };
            fluvio.admin().await.create("coldstream-test-spu".to_owned(), false, spec).await.unwrap();
        });
        let spu = Command::new(&binary)
            .args(["spu", "-i", "5001", "-p", &format!("127.0.0.1:{spu_public}")])
            .args(["-v", &format!("127.0.0.1:{spu_private}"), "--sc-addr", &format!("127.0.0.1:{private}")])
            .arg("--log-base-dir")
            .arg(dir.path().join("spu"))
            .stdout(Stdio::null())
            .stderr(log("spu.log"))
            .spawn()
            .unwrap();
        cluster.children.push(spu);
        cluster._dir = Some(dir);
        Some(cluster)
    }
}

#[cfg(feature = "fluvio")]
#[test]
fn the_fluvio_log_passes_the_conformance_suite_against_a_real_cluster() {
    use coldstream_sources::log::fluvio::{FluvioLog, FluvioLogConfig};
    use coldstream_sources::log::{EventLog, LogError, conformance};

    let Some(cluster) = cluster::find("the_fluvio_log_passes_the_conformance_suite_against_a_real_cluster") else {
        return;
    };
    // Topic names are unique per run, so that a running cluster can be reused.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let config = |name: &str| FluvioLogConfig {
        endpoint: cluster.endpoint.clone(),
        topic: format!("cs-{run}-{name}"),
        replication: 1,
    };
    let factory = |name: &str| -> Result<Box<dyn EventLog>, LogError> { Ok(Box::new(FluvioLog::open(config(name))?)) };
    conformance::run_all(&factory);
    conformance::run_read_half(&conformance::written(&factory));
    // A follower in another process sees what the writer made durable.
    let mut writer = FluvioLog::open(config("followed")).unwrap();
    writer.append(5, &[coldstream_sources::log::Record::accepted(&conformance::event(1))]).unwrap();
    writer.sync().unwrap();
    let follower = FluvioLog::follow(config("followed")).unwrap();
    assert_eq!(follower.durable_offset(), 1);
    let mut reader = follower.open(0).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read(10, &mut out).unwrap(), 1);
    writer.append(9, &[coldstream_sources::log::Record::accepted(&conformance::event(2))]).unwrap();
    writer.sync().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while follower.durable_offset() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(reader.read(10, &mut out).unwrap(), 1);
    assert_eq!(out[1].1.ingest_ms, 9);
}

#[cfg(feature = "fluvio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_the_fluvio_log_acks_archives_and_resumes_after_a_restart() {
    use coldstream::config::{FluvioSection, LogSection};
    use coldstream::server::Server;
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_sources::simulator::{self as simulate, RunSpec};
    use std::time::Duration;

    let found = tokio::task::spawn_blocking(|| {
        cluster::find("a_server_on_the_fluvio_log_acks_archives_and_resumes_after_a_restart")
    });
    let Some(cluster) = found.await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let mut config = crate::support::config(dir.path());
    config.log = LogSection::Fluvio(FluvioSection {
        endpoint: cluster.endpoint.clone(),
        topic: format!("cs-{run}-server"),
        replication: 1,
    });
    config.checkpoint.every_records = 2_000;
    let spec =
        FleetSpec { seed: 4, fridges: 8, events: 6_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let fleet = |target: String| RunSpec {
        target,
        tokens: crate::support::tokens(),
        tls: None,
        rate: None,
        batch: 200,
        progress: false,
    };
    // The same fleet into the embedded log, for comparison.
    let embedded_dir = tempfile::tempdir().unwrap();
    let server = Server::start(&crate::support::config(embedded_dir.path())).await.unwrap();
    let embedded =
        simulate::run(Fleet::new(&spec), &fleet(format!("http://{}", server.addr())), spec.events).await.unwrap();
    server.shutdown().await.unwrap();
    let server = Server::start(&config).await.unwrap();
    let summary =
        simulate::run(Fleet::new(&spec), &fleet(format!("http://{}", server.addr())), spec.events).await.unwrap();
    eprintln!("fleet into the embedded log: {embedded}");
    eprintln!("fleet into the Fluvio log:   {summary}");
    assert_eq!(summary.delivered.rejected, 0);
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    let acked = summary.delivered.accepted;
    let archived = coldstream::rebuild::archived_events(dir.path()).unwrap().len() as u64;
    assert_eq!(archived, acked, "every acked event archived once");
    let checks = coldstream::verify::views_against_references(dir.path()).await.unwrap();
    assert!(checks.iter().all(|c| c.equal), "{checks:?}");

    // A restart resumes from its checkpoint on the same topic; the fleet
    // sending everything again is answered with duplicates.
    let server = Server::start(&config).await.unwrap();
    let again =
        simulate::run(Fleet::new(&spec), &fleet(format!("http://{}", server.addr())), spec.events).await.unwrap();
    assert_eq!(again.delivered.accepted, 0, "{again}");
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(coldstream::rebuild::archived_events(dir.path()).unwrap().len() as u64, acked);
    let checks = coldstream::verify::views_against_references(dir.path()).await.unwrap();
    assert!(checks.iter().all(|c| c.equal), "{checks:?}");
    drop(cluster);
}
