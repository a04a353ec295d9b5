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
        /// How to start the SPU again, for a cluster this test started.
        spu: Option<(PathBuf, Vec<std::ffi::OsString>, PathBuf)>,
    }

    impl TestCluster {
        /// SIGKILLs the SPU and starts it again on its own directory, when
        /// this test started the cluster; `false` for a running one.
        pub(crate) fn restart_spu(&mut self) -> bool {
            let Some((binary, args, log)) = &self.spu else { return false };
            let mut old = self.children.pop().expect("the SPU is the last child");
            old.kill().unwrap();
            old.wait().unwrap();
            let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
            let spu = Command::new(binary).args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
            self.children.push(spu);
            true
        }
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

    /// The files of a cluster that speaks only mutual TLS: its servers'
    /// certificate and key, the CA of their clients, and a client's.
    pub(crate) struct ClusterTls {
        pub(crate) server_cert: PathBuf,
        pub(crate) server_key: PathBuf,
        pub(crate) ca: PathBuf,
        pub(crate) client: coldstream_sources::log::fluvio::FluvioTls,
    }

    impl ClusterTls {
        /// The arguments that make an SC or SPU serve its public port with
        /// TLS, and plaintext on `plain` (Fluvio's internal one).
        fn args(&self, plain: u16) -> Vec<std::ffi::OsString> {
            let mut args: Vec<std::ffi::OsString> = vec!["--tls".into(), "--enable-client-cert".into()];
            for (flag, path) in
                [("--server-cert", &self.server_cert), ("--server-key", &self.server_key), ("--ca-cert", &self.ca)]
            {
                args.push(flag.into());
                args.push(path.into());
            }
            args.push("--bind-non-tls-public".into());
            args.push(format!("127.0.0.1:{plain}").into());
            args
        }
    }

    fn missing(test: &str) {
        eprintln!(
            "skipped {test}: no Fluvio cluster (set COLDSTREAM_FLUVIO=host:port, or COLDSTREAM_FLUVIO_RUN or PATH to a fluvio-run binary)"
        );
    }

    /// A cluster this test starts with TLS required, or `None` (and one line
    /// saying so) without a `fluvio-run` binary.
    pub(crate) fn start_with_tls(test: &str, tls: ClusterTls) -> Option<TestCluster> {
        let Some(binary) = fluvio_run() else {
            missing(test);
            return None;
        };
        Some(start(binary, Some(tls)))
    }

    /// The cluster, or `None` (and one line saying so) when there is none.
    pub(crate) fn find(test: &str) -> Option<TestCluster> {
        if let Ok(endpoint) = std::env::var("COLDSTREAM_FLUVIO") {
            return Some(TestCluster { endpoint, children: Vec::new(), _dir: None, spu: None });
        }
        let Some(binary) = fluvio_run() else {
            missing(test);
            return None;
        };
        Some(start(binary, None))
    }

    fn start(binary: PathBuf, tls: Option<ClusterTls>) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let (public, private, spu_public, spu_private) = (free_port(), free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let sc = Command::new(&binary)
            .args(["sc", "--local"])
            .arg(dir.path().join("sc"))
            .args(["--bind-public", &format!("127.0.0.1:{public}"), "--bind-private", &format!("127.0.0.1:{private}")])
            .args(tls.as_ref().map(|tls| tls.args(free_port())).unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(log("sc.log"))
            .spawn()
            .unwrap();
        let mut cluster =
            TestCluster { endpoint: format!("127.0.0.1:{public}"), children: vec![sc], _dir: None, spu: None };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut config = FluvioClusterConfig::new(cluster.endpoint.clone());
            if let Some(tls) = &tls {
                config = config.with_tls(fluvio::config::TlsPaths {
                    domain: tls.client.domain.clone(),
                    key: tls.client.key.clone(),
                    cert: tls.client.cert.clone(),
                    ca_cert: tls.client.ca.clone(),
                });
            }
            let fluvio = loop {
                match Fluvio::connect_with_config(&config).await {
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
        let mut args: Vec<std::ffi::OsString> =
            ["spu", "-i", "5001", "-p", &format!("127.0.0.1:{spu_public}")].iter().map(Into::into).collect();
        for arg in ["-v", &format!("127.0.0.1:{spu_private}"), "--sc-addr", &format!("127.0.0.1:{private}")] {
            args.push(arg.into());
        }
        args.push("--log-base-dir".into());
        args.push(dir.path().join("spu").into());
        args.extend(tls.as_ref().map(|tls| tls.args(free_port())).unwrap_or_default());
        let spu = Command::new(&binary).args(&args).stdout(Stdio::null()).stderr(log("spu.log")).spawn().unwrap();
        cluster.children.push(spu);
        cluster.spu = Some((binary, args, dir.path().join("spu.log")));
        cluster._dir = Some(dir);
        cluster
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
        partitions: 1,
        replication: 1,
        tls: None,
    };
    let factory = |name: &str| -> Result<Box<dyn EventLog>, LogError> { Ok(Box::new(FluvioLog::open(config(name))?)) };
    conformance::run_all(&factory);
    conformance::run_read_half(&conformance::written(&factory));
    // On a topic of three partitions, two of them written by no one but
    // the writer's progress markers.
    let spread = |name: &str| -> Result<Box<dyn EventLog>, LogError> {
        Ok(Box::new(FluvioLog::open(FluvioLogConfig { partitions: 3, ..config(&format!("p3-{name}")) })?))
    };
    conformance::run_all(&spread);
    conformance::run_read_half(&conformance::written(&spread));
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

/// Ack latency at a gateway: one fridge sends 200 batches of 10 telemetry
/// events, each once the previous one is acked; the time from send to ack.
#[cfg(feature = "fluvio")]
async fn ack_latencies(addr: &str) -> String {
    use coldstream_pipelines::{Payload, Temperature};
    let mut session = crate::support::session(addr, "paced").await;
    let mut took = Vec::with_capacity(200);
    for batch in 0..200u64 {
        let events = (1..=10)
            .map(|i| {
                let seq = batch * 10 + i;
                let reading = Payload::Telemetry { temperature_c: Temperature(4.0), door_open: false };
                coldstream_sources::convert::encode(&crate::support::event("paced", seq, (seq / 20) as i64, reading))
            })
            .collect();
        let sent = std::time::Instant::now();
        session.send(batch + 1, events).await.unwrap();
        assert_eq!(session.ack().await.unwrap().accepted.len(), 10);
        took.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    format!("ack latency p50 {:.2} ms, p99 {:.2} ms (200 batches of 10)", took[99], took[197])
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
        partitions: 3,
        ..FluvioSection::default()
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
    let embedded_acks = ack_latencies(&format!("http://{}", server.addr())).await;
    server.shutdown().await.unwrap();
    // And into a topic of one partition.
    let one_dir = tempfile::tempdir().unwrap();
    let mut one = crate::support::config(one_dir.path());
    one.log = LogSection::Fluvio(FluvioSection {
        endpoint: cluster.endpoint.clone(),
        topic: format!("cs-{run}-server-one"),
        ..FluvioSection::default()
    });
    let server = Server::start(&one).await.unwrap();
    let single =
        simulate::run(Fleet::new(&spec), &fleet(format!("http://{}", server.addr())), spec.events).await.unwrap();
    let single_acks = ack_latencies(&format!("http://{}", server.addr())).await;
    assert_eq!(single.delivered.accepted, embedded.delivered.accepted, "{single}");
    server.shutdown().await.unwrap();
    let server = Server::start(&config).await.unwrap();
    let summary =
        simulate::run(Fleet::new(&spec), &fleet(format!("http://{}", server.addr())), spec.events).await.unwrap();
    let fluvio_acks = ack_latencies(&format!("http://{}", server.addr())).await;
    eprintln!("fleet into the embedded log:                 {embedded}; {embedded_acks}");
    eprintln!("fleet into a Fluvio topic of one partition:  {single}; {single_acks}");
    eprintln!("fleet into a Fluvio topic of three partitions: {summary}; {fluvio_acks}");
    assert_eq!(summary.delivered.rejected, 0);
    server.caught_up(Duration::from_secs(120)).await.unwrap();
    server.shutdown().await.unwrap();
    let acked = summary.delivered.accepted + 2_000;
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

/// Two stateless gateways and one pipeline process on one Fluvio topic: a
/// fleet spread over both gateways, a fridge that moves to the other
/// gateway with a batch unacknowledged, and copies that two writers leave
/// in the topic are each archived once and counted once.
#[cfg(feature = "fluvio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_fluvio_topic_count_a_fridge_moved_mid_batch_once() {
    use coldstream::config::{FluvioSection, LogSection, Role};
    use coldstream::server::Server;
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_pipelines::{Payload as Domain, Temperature};
    use coldstream_sources::client::{Session, channel};
    use coldstream_sources::convert::encode;
    use coldstream_sources::log::fluvio::{FluvioLog, FluvioLogConfig};
    use coldstream_sources::log::{EventLog, Record};
    use coldstream_sources::simulator::{self as simulate, RunSpec};
    use std::time::Duration;

    let test = "two_gateways_on_one_fluvio_topic_count_a_fridge_moved_mid_batch_once";
    let Some(cluster) = tokio::task::spawn_blocking(move || cluster::find(test)).await.unwrap() else { return };
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let topic = format!("cs-{run}-gateways");
    let section = FluvioSection {
        endpoint: cluster.endpoint.clone(),
        topic: topic.clone(),
        partitions: 2,
        ..FluvioSection::default()
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |dir: &tempfile::TempDir, role: Role| {
        let mut config = crate::support::config(dir.path());
        config.log = LogSection::Fluvio(section.clone());
        config.role = role;
        config
    };
    let first = Server::start(&config(&dirs[0], Role::Gateway)).await.unwrap();
    let second = Server::start(&config(&dirs[1], Role::Gateway)).await.unwrap();
    let pipeline = Server::start(&config(&dirs[2], Role::Pipeline)).await.unwrap();
    let (a, b) = (format!("http://{}", first.addr()), format!("http://{}", second.addr()));

    let spec =
        FleetSpec { seed: 5, fridges: 6, events: 3_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let fleet = RunSpec {
        target: format!("{a},{b}"),
        tokens: crate::support::tokens(),
        tls: None,
        rate: None,
        batch: 100,
        progress: false,
    };
    let summary = simulate::run(Fleet::new(&spec), &fleet, spec.events).await.unwrap();
    assert_eq!(summary.delivered.rejected, 0, "{summary}");

    // A fridge sends a batch to the first gateway, and before its ack
    // moves to the second, which welcomes it with what the first acked.
    let reading = Domain::Telemetry { temperature_c: Temperature(4.5), door_open: false };
    let events: Vec<_> = (1..=500)
        .map(|seq| encode(&crate::support::event("moved", seq, (seq / 5) as i64 + 60, reading.clone())))
        .collect();
    let token = crate::support::fridge_token("moved");
    let mut at_first = Session::open(channel(&a).await.unwrap(), "moved", &token).await.unwrap();
    at_first.send(1, events[..20].to_vec()).await.unwrap();
    assert_eq!(at_first.ack().await.unwrap().accepted.len(), 20);
    at_first.send(2, events[20..].to_vec()).await.unwrap();
    let mut at_second = Session::open(channel(&b).await.unwrap(), "moved", &token).await.unwrap();
    assert!(at_second.highest_durable_seq >= 20, "Welcome counts what the other gateway acked");
    let unacked: Vec<_> = events.iter().filter(|e| e.seq > at_second.highest_durable_seq).cloned().collect();
    let resent = unacked.len();
    at_second.send(1, unacked).await.unwrap();
    let ack = at_second.ack().await.unwrap();
    assert_eq!(ack.accepted.len() + ack.duplicates.len(), resent);
    let _ = at_first.ack().await;
    drop((at_first, at_second));

    // Two writers that each append the same events, as two gateways do
    // when a fridge's resend overtakes its first copy: the first gateway
    // has seqs 1–6 in flight, nothing of it durable yet, so the fridge
    // resends 1–10 to the second, whose commit lands first.
    let log_config = FluvioLogConfig {
        endpoint: cluster.endpoint.clone(),
        topic: topic.clone(),
        partitions: 2,
        replication: 1,
        tls: None,
    };
    let copied: Vec<Vec<u8>> = (1..=10)
        .map(|seq| {
            Record::accepted(&coldstream_pipelines::Event {
                source_id: "copied".into(),
                incarnation: 0,
                seq,
                event_time: chrono::Utc::now().timestamp_micros() - 3_600_000_000 + seq as i64,
                payload: Domain::Telemetry { temperature_c: Temperature(5.0), door_open: false },
            })
        })
        .collect();
    let mut writers = (FluvioLog::open(log_config.clone()).unwrap(), FluvioLog::open(log_config).unwrap());
    let now = coldstream_sources::ingest::now_ms();
    writers.0.append(now, &copied[..6]).unwrap();
    writers.1.append(now, &copied).unwrap();
    writers.1.sync().unwrap();
    writers.0.sync().unwrap();

    pipeline.caught_up(Duration::from_secs(120)).await.unwrap();
    for server in [first, second, pipeline] {
        server.shutdown().await.unwrap();
    }
    let archived = coldstream::rebuild::archived_events(dirs[2].path()).unwrap();
    let mut ids: Vec<(String, u64)> = archived.iter().map(|(_, e)| (e.source_id.clone(), e.seq)).collect();
    ids.sort();
    let unique = ids.len();
    ids.dedup();
    assert_eq!(unique, ids.len(), "an event archived twice");
    assert_eq!(unique as u64, summary.delivered.accepted + 500 + 10, "every acked event archived once");
    let checks = coldstream::verify::views_against_references(dirs[2].path()).await.unwrap();
    assert!(checks.iter().all(|c| c.equal), "{checks:?}");
    eprintln!("two gateways on Fluvio: {summary}; the moved fridge resent {resent} events to the other gateway");
}

/// A pipeline of two timely processes on a Fluvio topic, with a gateway
/// acking into it: a pipeline process SIGKILLed under load and the cluster
/// restarted, then the Fluvio SPU SIGKILLed and restarted under load. Every
/// event of the fleet is archived once, and the views, `_now` tables and
/// webhook ids equal those of one process reading the same topic afresh.
#[cfg(feature = "fluvio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_cluster_on_fluvio_survives_a_killed_process_and_a_restarted_spu() {
    use crate::cluster::{Process, hostfile, outputs, receiver, webhook_ids};
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_sinks::webhooks::receiver::Receiver;
    use coldstream_sources::simulator::{self as simulate, RunSpec};
    use std::path::PathBuf;
    use std::time::Duration;

    let test = "a_pipeline_cluster_on_fluvio_survives_a_killed_process_and_a_restarted_spu";
    let Some(mut cluster) = tokio::task::spawn_blocking(move || cluster::find(test)).await.unwrap() else { return };
    let root = tempfile::tempdir().unwrap();
    let (gateway, topic) = gateway_on_a_new_topic(&root.path().join("gateway"), &cluster.endpoint, "cluster", 4).await;

    let (cluster_receiver, alone_receiver) = (receiver().await, receiver().await);
    let endpoint = cluster.endpoint.clone();
    let config_file = |name: &str, receiver: &Receiver| pipeline_config(root.path(), name, &endpoint, &topic, receiver);
    let cluster_config = config_file("cluster.toml", &cluster_receiver);
    let hosts = hostfile(root.path(), 2);
    let dirs: Vec<PathBuf> = (0..2).map(|i| root.path().join(format!("process-{i}"))).collect();
    let start = |i: usize| Process::member(i, &hosts, &dirs[i], &cluster_config, &[]);
    let mut processes: Vec<Process> = (0..2).map(start).collect();
    for process in &processes {
        process.wait_caught_up();
    }

    let spec =
        FleetSpec { seed: 8, fridges: 8, events: 30_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let expected = Fleet::new(&spec).all_events().len() as u64;
    let fleet = RunSpec {
        target: format!("http://{}", gateway.addr()),
        tokens: crate::support::tokens(),
        tls: None,
        rate: Some(3_000.0),
        batch: 50,
        progress: false,
    };
    let sent = spec.clone();
    let sending = tokio::spawn(async move { simulate::run(Fleet::new(&sent), &fleet, sent.events).await });

    // A pipeline process killed under load: the other stops by itself,
    // and both start again while the gateway goes on acking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = processes.pop().unwrap();
    drop(killed);
    let survivor = processes.pop().unwrap();
    tokio::task::spawn_blocking(move || survivor.wait_exit()).await.unwrap();
    let restarted = std::time::Instant::now();
    let processes: Vec<Process> = (0..2).map(start).collect();
    for process in &processes {
        process.wait_caught_up();
    }
    eprintln!("the cluster caught up {} ms after its restart", restarted.elapsed().as_millis());

    // The SPU killed and started again under load: acks stop while it is
    // down, the fleet retries, and nothing is lost or counted twice.
    if cluster.restart_spu() {
        eprintln!("restarted the SPU under load");
    } else {
        eprintln!("skipped the SPU restart: the cluster was not started by this test");
    }
    let summary = sending.await.unwrap().unwrap();
    eprintln!("fleet through the killed process and the SPU restart: {summary}");
    assert_eq!(summary.delivered.rejected, 0, "{summary}");
    gateway.shutdown().await.unwrap();
    for process in &processes {
        process.terminate();
    }
    for process in processes {
        process.wait_success();
    }

    // One process reading the topic afresh, for comparison.
    let alone = root.path().join("alone");
    read_alone(&alone, &config_file("alone.toml", &alone_receiver));

    // Each process read, and archived, only its share of the partitions.
    let mut ids: Vec<(String, u64)> = Vec::new();
    for (process, dir) in dirs.iter().enumerate() {
        let share = std::fs::read_to_string(dir.join("archived-log")).unwrap();
        assert!(share.contains(&format!("p % 2 = {process} of 4")), "process {process} archived {share}");
        let archived = coldstream::rebuild::archived_events(dir).unwrap();
        assert!(!archived.is_empty(), "process {process} archived nothing");
        for (_, event) in archived {
            let partition = coldstream_sources::log::fluvio::partition_of(event.source_id.as_bytes(), 4);
            assert_eq!(partition as usize % 2, process, "{} archived by process {process}", event.source_id);
            ids.push((event.source_id, event.seq));
        }
    }
    let archived = ids.len() as u64;
    // What is missing, if anything, from the cluster's archive and from a
    // fresh read of the whole topic (which tells a lost record from a
    // misread one).
    let missing = |archived: &mut dyn Iterator<Item = (String, u64)>| {
        let got: std::collections::BTreeSet<(String, u64)> = archived.collect();
        let all = Fleet::new(&spec).all_events().into_iter().map(|e| (e.source_id, e.seq));
        all.filter(|id| !got.contains(id)).take(40).collect::<Vec<_>>()
    };
    let alone_archived = coldstream::rebuild::archived_events(&alone).unwrap();
    assert_eq!(
        archived,
        expected,
        "every event of the fleet archived once; missing from the cluster's archive: {:?}; from one process's: {:?}",
        missing(&mut ids.iter().cloned()),
        missing(&mut alone_archived.into_iter().map(|(_, e)| (e.source_id, e.seq)))
    );
    ids.sort();
    ids.dedup();
    assert_eq!(archived, ids.len() as u64, "an event archived twice");
    let (one, two) = (outputs(std::slice::from_ref(&alone)).await, outputs(&dirs).await);
    for ((table, rows), (_, cluster_rows)) in one.iter().zip(&two) {
        assert_eq!(rows, cluster_rows, "{table} differs between the interrupted cluster and one process");
    }
    let (alone_ids, cluster_ids) =
        (webhook_ids(std::slice::from_ref(&alone), &alone_receiver), webhook_ids(&dirs, &cluster_receiver));
    assert!(!alone_ids.is_empty());
    assert_eq!(alone_ids, cluster_ids, "the interrupted cluster sends the webhooks one process sends");
    alone_receiver.stop().await;
    cluster_receiver.stop().await;
}

/// The config of a pipeline process on the Fluvio `topic`, delivering
/// every webhook to `receiver`, written to `name` in `dir`.
#[cfg(feature = "fluvio")]
fn pipeline_config(
    dir: &std::path::Path,
    name: &str,
    endpoint: &str,
    topic: &str,
    receiver: &coldstream_sinks::webhooks::receiver::Receiver,
) -> std::path::PathBuf {
    let head = format!(
        "[log]\nkind = \"fluvio\"\nendpoint = \"{endpoint}\"\ntopic = \"{topic}\"\n[checkpoint]\nevery_records = 2000\n"
    );
    crate::cluster::config_file_after(dir, name, &head, receiver)
}

/// A gateway (`--role gateway`) with its data in `dir`, on a topic of
/// `partitions` named for `test` and this run; returns it with the topic.
#[cfg(feature = "fluvio")]
async fn gateway_on_a_new_topic(
    dir: &std::path::Path,
    endpoint: &str,
    test: &str,
    partitions: u32,
) -> (coldstream::server::Server, String) {
    use coldstream::config::{FluvioSection, LogSection, Role};
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let topic = format!("cs-{run}-{test}");
    let mut config = crate::support::config(dir);
    config.log = LogSection::Fluvio(FluvioSection {
        endpoint: endpoint.to_owned(),
        topic: topic.clone(),
        partitions,
        ..FluvioSection::default()
    });
    config.role = Role::Gateway;
    (coldstream::server::Server::start(&config).await.unwrap(), topic)
}

/// One pipeline process of two workers reading the topic of `config`
/// afresh into `dir`, to the end, for comparison.
#[cfg(feature = "fluvio")]
fn read_alone(dir: &std::path::Path, config: &std::path::Path) {
    let process = crate::cluster::Process::start(&[
        "--role",
        "pipeline",
        "--workers",
        "2",
        "--data",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    process.wait_caught_up();
    process.terminate();
    process.wait_success();
}

/// Two pipeline processes on a topic of two partitions, with every fridge
/// in one of them: the other process's share holds only progress markers,
/// and still moves the cluster's frontier on. Both processes catch up, and
/// the views equal those of one process.
#[cfg(feature = "fluvio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_share_of_the_partitions_does_not_hold_the_cluster_back() {
    use crate::cluster::{Process, hostfile, outputs, receiver, webhook_ids};
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_sources::simulator::{self as simulate, RunSpec};

    let test = "an_idle_share_of_the_partitions_does_not_hold_the_cluster_back";
    let Some(cluster) = tokio::task::spawn_blocking(move || cluster::find(test)).await.unwrap() else { return };
    let root = tempfile::tempdir().unwrap();
    let (gateway, topic) = gateway_on_a_new_topic(&root.path().join("gateway"), &cluster.endpoint, "idle", 2).await;
    let (cluster_receiver, alone_receiver) = (receiver().await, receiver().await);
    let cluster_config = pipeline_config(root.path(), "cluster.toml", &cluster.endpoint, &topic, &cluster_receiver);
    let hosts = hostfile(root.path(), 2);
    let dirs: Vec<std::path::PathBuf> = (0..2).map(|i| root.path().join(format!("process-{i}"))).collect();
    let processes: Vec<Process> = (0..2).map(|i| Process::member(i, &hosts, &dirs[i], &cluster_config, &[])).collect();
    for process in &processes {
        process.wait_caught_up();
    }

    // One fridge: one partition, one process's share.
    let spec =
        FleetSpec { seed: 9, fridges: 1, events: 3_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let fleet = RunSpec {
        target: format!("http://{}", gateway.addr()),
        tokens: crate::support::tokens(),
        tls: None,
        rate: Some(2_000.0),
        batch: 20,
        progress: false,
    };
    let summary = simulate::run(Fleet::new(&spec), &fleet, spec.events).await.unwrap();
    assert_eq!(summary.delivered.rejected, 0, "{summary}");
    gateway.shutdown().await.unwrap();

    // One process reads the topic to its end; the running cluster, whose
    // views are final only once the idle share's frontier has passed the
    // last commit, must deliver the same webhooks before it is stopped.
    let alone = root.path().join("alone");
    read_alone(&alone, &pipeline_config(root.path(), "alone.toml", &cluster.endpoint, &topic, &alone_receiver));
    let expected = webhook_ids(std::slice::from_ref(&alone), &alone_receiver);
    assert!(!expected.is_empty());
    let delivered = || -> std::collections::BTreeSet<String> {
        cluster_receiver.received().into_iter().filter(|d| d.kind != "restock.updated").map(|d| d.id).collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while delivered() != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "the running cluster delivered {} of the {} webhooks in 120 s",
            delivered().len(),
            expected.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for process in &processes {
        process.terminate();
    }
    for process in processes {
        process.wait_success();
    }
    let archived: Vec<usize> =
        dirs.iter().map(|dir| coldstream::rebuild::archived_events(dir).unwrap().len()).collect();
    let expected = Fleet::new(&spec).all_events().len();
    assert!(archived.contains(&0) && archived.iter().sum::<usize>() == expected, "archived per process: {archived:?}");
    let (one, two) = (outputs(std::slice::from_ref(&alone)).await, outputs(&dirs).await);
    for ((table, rows), (_, cluster_rows)) in one.iter().zip(&two) {
        assert_eq!(rows, cluster_rows, "{table} differs between the cluster and one process");
    }
    alone_receiver.stop().await;
    cluster_receiver.stop().await;
}

/// The Fluvio log over mutual TLS, to a cluster that requires it: records
/// go and come back; a client without TLS, or with a certificate another CA
/// signed, is refused.
#[cfg(feature = "fluvio")]
#[test]
fn the_fluvio_log_speaks_mutual_tls_to_a_cluster_that_requires_it() {
    use crate::tls::Authority;
    use coldstream_sources::log::fluvio::{FluvioLog, FluvioLogConfig, FluvioTls};
    use coldstream_sources::log::{EventLog, Record, conformance};
    use rcgen::ExtendedKeyUsagePurpose;
    use std::time::Duration;

    let test = "the_fluvio_log_speaks_mutual_tls_to_a_cluster_that_requires_it";
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca, stranger) = (Authority::new(), Authority::new());
    // A client reaches an SPU under the name `<SPU name>.<domain>`.
    let (server_cert, server_key) =
        ca.issue(&["localhost", "coldstream-test-spu.localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = ca.issue(&["coldstream"], ExtendedKeyUsagePurpose::ClientAuth);
    let (other_cert, other_key) = stranger.issue(&["coldstream"], ExtendedKeyUsagePurpose::ClientAuth);
    let client = FluvioTls {
        domain: "localhost".into(),
        ca: write("ca.pem", ca.pem()),
        cert: write("client.pem", client_cert),
        key: write("client.key", client_key),
    };
    let tls = cluster::ClusterTls {
        server_cert: write("server.pem", server_cert),
        server_key: write("server.key", server_key),
        ca: client.ca.clone(),
        client: client.clone(),
    };
    let Some(cluster) = cluster::start_with_tls(test, tls) else { return };
    let config = FluvioLogConfig {
        endpoint: cluster.endpoint.clone(),
        topic: "cs-tls".into(),
        partitions: 1,
        replication: 1,
        tls: Some(client.clone()),
    };
    let mut log = FluvioLog::open(config.clone()).unwrap();
    log.append(5, &[Record::accepted(&conformance::event(1)), Record::accepted(&conformance::event(2))]).unwrap();
    log.sync().unwrap();
    let mut reader = log.readers().open(0).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read(10, &mut out).unwrap(), 2);

    // Refused within a minute, whatever the way it fails.
    let refused = |config: FluvioLogConfig| {
        let (tell, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tell.send(FluvioLog::open(config).map(|_| ()));
        });
        match answer.recv_timeout(Duration::from_secs(60)) {
            Ok(result) => result.is_err(),
            Err(_) => true,
        }
    };
    assert!(refused(FluvioLogConfig { tls: None, ..config.clone() }), "a client without TLS is refused");
    let other = FluvioTls { cert: write("other.pem", other_cert), key: write("other.key", other_key), ..client };
    assert!(refused(FluvioLogConfig { tls: Some(other), ..config }), "a certificate of another CA is refused");
}
