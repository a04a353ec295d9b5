//! Hostile clients, reflashed fridges and operator mistakes, each against
//! the real server over gRPC or the real CLI. Every test is named after a
//! promise that once broke: an ack means durable, nothing is lost or
//! counted twice, bad input is data and never a crash.

use coldstream::server::Server;
use coldstream_pipelines::Payload;
use coldstream_sources::client::{self, ClientError, Session};
use coldstream_sources::convert::encode;
use coldstream_sources::proto::{self, RejectReason};

use crate::support::{back_office_token, event, fridge_token, query_csv, start};

fn taken(fridge: &str, seq: u64) -> proto::Event {
    encode(&event(fridge, seq, 1, Payload::ItemTaken { session_id: "S1".into(), sku: "cola".into(), qty: 1 }))
}

fn takes(fridge: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<proto::Event> {
    seqs.into_iter().map(|seq| taken(fridge, seq)).collect()
}

fn codes(ack: &proto::Ack) -> Vec<(u64, RejectReason)> {
    ack.rejected.iter().map(|r| (r.seq, RejectReason::try_from(r.code).unwrap())).collect()
}

fn status_code<T>(result: Result<T, ClientError>) -> Option<tonic::Code> {
    match result {
        Err(ClientError::Status(status)) => Some(status.code()),
        _ => None,
    }
}

/// Sends one batch and waits for its ack.
async fn send(session: &mut Session, batch_id: u64, events: Vec<proto::Event>) -> proto::Ack {
    session.send(batch_id, events).await.unwrap();
    session.ack().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seq_of_u64_max_does_not_blackhole_the_fridge() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let mut fridge = Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    let wild = send(&mut fridge, 1, takes("FR-000001", [u64::MAX])).await;
    assert_eq!(codes(&wild), [(u64::MAX, RejectReason::SeqGap)]);
    assert_eq!(wild.highest_durable_seq, 0);
    let real = send(&mut fridge, 2, takes("FR-000001", 1..=10)).await;
    assert_eq!(real.accepted, (1..=10).collect::<Vec<_>>(), "{real:?}");
    server.caught_up(std::time::Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(query_csv(dir.path(), "SELECT count(*) AS n FROM events").await, "n\n10\n");
    assert_eq!(query_csv(dir.path(), "SELECT reason_code FROM rejected").await, "reason_code\nseq_gap\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_out_of_order_is_refused_not_acked_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let mut fridge = Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    let ack = send(&mut fridge, 1, takes("FR-000001", [5, 3, 5, 6])).await;
    assert_eq!(ack.accepted, [5, 6]);
    assert!(ack.duplicates.is_empty(), "nothing was durable before: {ack:?}");
    assert_eq!(codes(&ack), [(3, RejectReason::SeqOrder), (5, RejectReason::SeqOrder)]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflashed_fridge_is_heard_in_its_new_incarnation_and_a_stale_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let token = fridge_token("FR-000001");
    let mut before = Session::open(channel.clone(), "FR-000001", &token).await.unwrap();
    assert_eq!(send(&mut before, 1, takes("FR-000001", 1..=8)).await.accepted.len(), 8);
    drop(before);
    // The flash was wiped: seqs restart at 1, and the firmware raised its incarnation.
    let mut after = Session::open_as(channel.clone(), "FR-000001", 1, &token).await.unwrap();
    assert_eq!(after.highest_durable_seq, 0);
    let ack = send(&mut after, 1, takes("FR-000001", 1..=5)).await;
    assert_eq!(ack.accepted, (1..=5).collect::<Vec<_>>(), "{ack:?}");
    assert_eq!(ack.highest_durable_seq, 5);
    // An old image of the firmware comes back: refused, and it says why.
    let stale = Session::open_as(channel, "FR-000001", 0, &token).await;
    assert_eq!(status_code(stale), Some(tonic::Code::FailedPrecondition));
    server.caught_up(std::time::Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(
        query_csv(dir.path(), "SELECT incarnation, count(*) AS n FROM events GROUP BY incarnation ORDER BY 1").await,
        "incarnation,n\n0,8\n1,5\n"
    );
    // After a restart the new incarnation is still the one that counts.
    let server = start(dir.path()).await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    let resumed = Session::open_as(channel, "FR-000001", 1, &token).await.unwrap();
    assert_eq!(resumed.highest_durable_seq, 5);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_office_client_named_like_a_fridge_does_not_silence_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let prices: Vec<_> = (1..=50)
        .map(|seq| {
            encode(&event(
                "FR-000001",
                seq,
                1,
                Payload::PriceChanged { sku: "cola".into(), price_cents: 100 + seq as i64, fridge_id: None },
            ))
        })
        .collect();
    let published = client::publish(channel.clone(), "FR-000001", &back_office_token("FR-000001"), prices).await;
    assert_eq!(published.unwrap().accepted.len(), 50);
    let mut fridge = Session::open(channel, "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    assert_eq!(fridge.highest_durable_seq, 0, "the fridge's seqs are its own");
    let ack = send(&mut fridge, 1, takes("FR-000001", 1..=10)).await;
    assert_eq!(ack.accepted, (1..=10).collect::<Vec<_>>(), "{ack:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_id_rule_are_refused_so_no_fridge_token_can_publish_prices() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    // A fridge named `backoffice/…` would hold the token of a back-office
    // client: no token can name it, and no Hello may.
    let named = "backoffice/prices";
    let opened = Session::open(channel.clone(), named, &fridge_token(named)).await;
    assert_eq!(status_code(opened), Some(tonic::Code::Unauthenticated));
    let opened = Session::open(channel.clone(), named, &fridge_token("FR-000001")).await;
    assert_eq!(status_code(opened), Some(tonic::Code::InvalidArgument));
    let published = client::publish(channel.clone(), "a b", &back_office_token("prices"), Vec::new()).await;
    assert_eq!(status_code(published), Some(tonic::Code::InvalidArgument));
    // A back-office event naming a fridge id outside the rule is malformed.
    let plan = encode(&event(
        "prices",
        1,
        1,
        Payload::PlanogramSet { fridge_id: "FR/1".into(), sku: "cola".into(), par: 10, min: 2, perishable: false },
    ));
    let ack = client::publish(channel, "prices", &back_office_token("prices"), vec![plan]).await.unwrap();
    assert_eq!(codes(&ack), [(1, RejectReason::Malformed)]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_beyond_the_limit_is_refused_instead_of_wrapping_a_sum() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();
    let mut fridge = Session::open(channel.clone(), "FR-000001", &fridge_token("FR-000001")).await.unwrap();
    let capture = |seq, amount_cents| {
        encode(&event("FR-000001", seq, 2, Payload::PaymentCaptured { session_id: "S1".into(), amount_cents }))
    };
    let ack = send(&mut fridge, 1, vec![capture(1, i64::MAX), capture(2, 100_000_001), capture(3, 100_000_000)]).await;
    assert_eq!(ack.accepted, [3]);
    assert_eq!(codes(&ack), [(1, RejectReason::MoneyOutOfRange), (2, RejectReason::MoneyOutOfRange)]);
    let price = encode(&event(
        "prices",
        1,
        1,
        Payload::PriceChanged { sku: "cola".into(), price_cents: i64::MAX / 2, fridge_id: None },
    ));
    let ack = client::publish(channel, "prices", &back_office_token("prices"), vec![price]).await.unwrap();
    assert_eq!(codes(&ack), [(1, RejectReason::MoneyOutOfRange)]);
    server.shutdown().await.unwrap();
}

/// A server with `change` applied to the tests' configuration.
async fn start_with(dir: &std::path::Path, change: impl FnOnce(&mut coldstream::config::Config)) -> Server {
    let mut config = crate::support::config(dir);
    change(&mut config);
    Server::start(&config).await.unwrap()
}

fn empty_events(n: usize) -> Vec<proto::Event> {
    vec![proto::Event::default(); n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_are_refused_before_their_body_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.gateway.max_batch_events = 100).await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    // 100,000 empty events: twice the decode limit of a 100-event batch.
    let flood = empty_events(100_000);
    let forged =
        client::publish(channel.clone(), "prices", "cs1:k1:backoffice:prices:99999999999:00", flood.clone()).await;
    assert_eq!(status_code(forged), Some(tonic::Code::Unauthenticated), "refused on its metadata alone");
    let missing = client::publish(channel.clone(), "prices", "", flood.clone()).await;
    assert_eq!(status_code(missing), Some(tonic::Code::Unauthenticated));
    // With a valid token, the same body is refused by the decode limit, not decoded.
    let authenticated = client::publish(channel.clone(), "prices", &back_office_token("prices"), flood).await;
    assert_eq!(status_code(authenticated), Some(tonic::Code::OutOfRange));
    // A batch within the limits still goes through on the same connection.
    let fine = client::publish(channel, "prices", &back_office_token("prices"), Vec::new()).await;
    assert!(fine.is_ok(), "{fine:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_says_hello_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.gateway.hello_timeout_seconds = 1).await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    let (_silent, nothing) = tokio::sync::mpsc::channel::<proto::FridgeMessage>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(nothing));
    request.metadata_mut().insert("authorization", format!("Bearer {}", fridge_token("FR-000001")).parse().unwrap());
    let mut gateway = proto::fridge_gateway_client::FridgeGatewayClient::new(channel);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), gateway.stream(request)).await.unwrap();
    assert_eq!(answer.err().map(|s| s.code()), Some(tonic::Code::DeadlineExceeded));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_the_fleet_gets_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.gateway.max_connections = 2).await;
    let addr = format!("http://{}", server.addr());
    let first = crate::support::session(&addr, "FR-000001").await;
    let second = crate::support::session(&addr, "FR-000002").await;
    let third = match client::channel(&addr).await {
        Ok(channel) => Session::open(channel, "FR-000003", &fridge_token("FR-000003")).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(third.is_err(), "a third connection is over the cap");
    drop(first);
    // The freed permit lets the next fridge in (the close takes a moment to reach the server).
    let mut admitted = false;
    for _ in 0..100 {
        if let Ok(channel) = client::channel(&addr).await
            && Session::open(channel, "FR-000003", &fridge_token("FR-000003")).await.is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(admitted, "a connection closed frees its place");
    drop(second);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_expire_and_a_revoked_fridge_is_refused() {
    use coldstream::config::PreviousKey;
    use coldstream_sources::auth::{Key, Principal, Tokens, now_s};
    let dir = tempfile::tempdir().unwrap();
    let new_secret = "the-next-fleet-secret-2027";
    let server = start_with(dir.path(), |c| {
        c.auth.secret = new_secret.into();
        c.auth.key_id = "k2".into();
        c.auth.previous_keys = vec![PreviousKey { id: "k1".into(), secret: crate::support::TEST_SECRET.into() }];
        c.auth.revoked = vec!["FR-000666".into()];
    })
    .await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    let open = |fridge: &'static str, token: String| {
        let channel = channel.clone();
        async move { Session::open(channel, fridge, &token).await.map(|_| ()) }
    };
    // Issued before the rotation, under k1: still accepted.
    assert!(open("FR-000001", fridge_token("FR-000001")).await.is_ok());
    // Issued under the new key.
    let next = Tokens::with_keys(vec![Key::new("k2", new_secret)]);
    assert!(open("FR-000002", next.issue(&Principal::Fridge("FR-000002".into()))).await.is_ok());
    // Another fridge's token, an expired one, a revoked fridge, the old form.
    assert_eq!(status_code(open("FR-000003", fridge_token("FR-000001")).await), Some(tonic::Code::Unauthenticated));
    let expired = next.issue_until(&Principal::Fridge("FR-000004".into()), now_s() - 1);
    assert_eq!(status_code(open("FR-000004", expired).await), Some(tonic::Code::Unauthenticated));
    let revoked = next.issue(&Principal::Fridge("FR-000666".into()));
    assert_eq!(status_code(open("FR-000666", revoked).await), Some(tonic::Code::Unauthenticated));
    let legacy = next.issue_legacy(&Principal::Fridge("FR-000005".into()));
    assert_eq!(status_code(open("FR-000005", legacy.clone()).await), Some(tonic::Code::Unauthenticated));
    server.shutdown().await.unwrap();
    // While the config allows it, the old form is checked once Hello names the fridge.
    let server = start_with(dir.path(), |c| {
        c.auth.secret = new_secret.into();
        c.auth.key_id = "k2".into();
        c.auth.legacy_tokens = true;
    })
    .await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    assert!(Session::open(channel.clone(), "FR-000005", &legacy).await.is_ok());
    let as_other = Session::open(channel, "FR-000006", &legacy).await;
    assert_eq!(status_code(as_other), Some(tonic::Code::Unauthenticated));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_reach_parquet_within_roll_seconds_once_ingestion_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await; // parquet.roll_seconds = 1
    let addr = format!("http://{}", server.addr());
    let mut fridge = crate::support::session(&addr, "FR-000001").await;
    let counted = encode(&event("FR-000001", 1, 0, Payload::StockCounted { sku: "cola".into(), qty: 7 }));
    assert_eq!(send(&mut fridge, 1, vec![counted]).await.accepted, [1]);
    // No commit follows: the fleet is quiet. The live server's files alone must show the count.
    let mut seen = String::new();
    for _ in 0..600 {
        seen = query_csv(dir.path(), "SELECT fridge_id, sku, on_hand FROM inventory_now").await;
        if seen.lines().count() > 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "fridge_id,sku,on_hand\nFR-000001,cola,7\n");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_directory_replaced_under_its_archive_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let mut fridge = crate::support::session(&addr, "FR-000001").await;
    assert_eq!(send(&mut fridge, 1, takes("FR-000001", 1..=20)).await.accepted.len(), 20);
    server.caught_up(std::time::Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    // An operator restores an old, empty log/ beside the newer archive: the
    // checkpoints say records are missing.
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let refused = Server::start(&crate::support::config(dir.path())).await.err().expect("refused");
    assert!(refused.to_string().contains("log records are missing"), "{refused}");
    // Without the checkpoints either, the archive says so: its offsets would be reused.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let refused = Server::start(&crate::support::config(dir.path())).await.err().expect("refused");
    assert!(refused.to_string().contains("lost records"), "{refused}");
}

/// An analyst's query on a live server, while Parquet files roll, leaves
/// every temporary file alone: the archiver and the view sink go on, and
/// every acked event reaches `events/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysts_query_on_a_live_server_leaves_the_pipeline_running() {
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_sources::simulator::{self as simulate, RunSpec};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await; // parquet.roll_seconds = 1
    let target = format!("http://{}", server.addr());
    let spec =
        FleetSpec { seed: 9, fridges: 4, events: 4_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let run = RunSpec {
        target,
        tokens: crate::support::tokens(),
        tls: None,
        rate: Some(1_000.0),
        batch: 50,
        progress: false,
    };
    let fleet = tokio::spawn(async move { simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap() });
    while !fleet.is_finished() {
        // Every view and every table, as an analyst's dashboard would.
        for view in coldstream_pipelines::views::NAMES {
            query_csv(dir.path(), &format!("SELECT count(*) FROM {view}_now")).await;
        }
        query_csv(dir.path(), "SELECT count(*) FROM events").await;
    }
    let summary = fleet.await.unwrap();
    server.caught_up(std::time::Duration::from_secs(120)).await.expect("the archiver and the views keep up");
    server.shutdown().await.expect("no component stopped");
    let archived = query_csv(dir.path(), "SELECT count(*) AS n FROM events").await;
    assert_eq!(archived, format!("n\n{}\n", summary.delivered.accepted));
}

/// `coldstream query` only reads: `COPY`, DDL, DML and `SET` are refused
/// with a one-line error, and nothing is written.
#[test]
fn sql_that_would_write_or_change_the_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.csv");
    let copy = format!("COPY (SELECT 1) TO '{}'", out.display());
    for sql in [
        copy.as_str(),
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/tmp/x.csv'",
        "INSERT INTO events SELECT * FROM events",
        "DROP TABLE events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let mut args = vec!["query", "--data"];
        let data = dir.path().to_str().unwrap();
        args.extend([data, sql]);
        let error = crate::cli::stderr_of(&args);
        assert!(error.contains("read-only"), "{sql}: {error}");
        assert_eq!(error.trim_end().lines().count(), 1, "{sql}: {error}");
    }
    assert!(!out.exists(), "COPY wrote {}", out.display());
    let output = crate::support::binary()
        .args(["query", "--data", dir.path().to_str().unwrap(), "SELECT COUNT(*) FROM events"])
        .output()
        .unwrap();
    assert!(output.status.success(), "a read still works: {}", String::from_utf8_lossy(&output.stderr));
}

/// One process owns a data directory: a second server and a rebuild on a
/// live server's directory are refused with one line naming the holder,
/// and the directory is free again once the server has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_or_a_rebuild_on_a_live_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::config(dir.path());
    let server = Server::start(&config).await.unwrap();
    let second = Server::start(&config).await.err().expect("a second server on the same directory");
    let rebuild = coldstream::rebuild::rebuild(&config).await.expect_err("a rebuild of a live directory");
    for refused in [second.to_string(), rebuild.to_string()] {
        assert!(refused.contains("in use by another coldstream process"), "{refused}");
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
    }
    server.shutdown().await.unwrap();
    let again = Server::start(&config).await.unwrap();
    again.shutdown().await.unwrap();
}

/// SIGTERM, how service managers stop a process, is a clean stop and not a
/// crash: the server drains the log into every sink, takes a last
/// checkpoint and exits 0, so every acked event is in Parquet at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_sink_and_checkpoints_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::ServerProcess::start(dir.path());
    let events = crate::durability::history("FR-000001", 200);
    let mut session = crate::support::session(&server.addr, "FR-000001").await;
    for (i, chunk) in events.chunks(50).enumerate() {
        session.send(i as u64, chunk.iter().map(encode).collect()).await.unwrap();
        assert_eq!(session.ack().await.unwrap().accepted.len(), chunk.len());
    }
    drop(session);
    server.stop_with("-TERM");
    assert_eq!(query_csv(dir.path(), "SELECT COUNT(*) AS n FROM events").await, "n\n200\n");
    assert_eq!(
        query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await,
        crate::durability::csv_of(&coldstream_pipelines::views::inventory_reference(&events))
    );
    let checkpoints = std::fs::read_dir(dir.path().join("checkpoints")).unwrap().count();
    assert!(checkpoints > 0, "no last checkpoint was taken");
}
