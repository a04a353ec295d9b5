//! Hostile clients, reflashed fridges and operator mistakes, each against
//! the real server over gRPC or the real CLI. Every test is named after a
//! promise that once broke: an ack means durable, nothing is lost or
//! counted twice, bad input is data and never a crash.

use coldstream_pipelines::Payload;
use coldstream_sources::auth::{Principal, Tokens};
use coldstream_sources::client::{self, ClientError, Session};
use coldstream_sources::convert::encode;
use coldstream_sources::proto::{self, RejectReason};

use crate::support::{event, fridge_token, query_csv, start};

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

fn back_office_token(id: &str) -> String {
    Tokens::new(coldstream::config::DEV_SECRET).issue(&Principal::BackOffice(id.into()))
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
    // A fridge named `backoffice/…` would hold the token of a back-office client.
    let named = "backoffice/prices";
    let opened = Session::open(channel.clone(), named, &fridge_token(named)).await;
    assert_eq!(status_code(opened), Some(tonic::Code::InvalidArgument));
    let published = client::publish(channel.clone(), "a b", &back_office_token("a b"), Vec::new()).await;
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
