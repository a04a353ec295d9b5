//! The gRPC contract over real TCP: hello, batches, acks, rejections,
//! authentication.

use coldstream_pipelines::Payload;
use coldstream_sources::client::{self, ClientError, Session};
use coldstream_sources::convert::encode;
use coldstream_sources::proto::{self, RejectReason};

use crate::support::{event, fridge_token, query_csv, session, start};

fn taken(fridge: &str, seq: u64, qty: i64) -> proto::Event {
    encode(&event(fridge, seq, seq as i64, Payload::ItemTaken { session_id: "S1".into(), sku: "cola".into(), qty }))
}

fn unauthenticated(result: Result<Session, ClientError>) -> bool {
    matches!(result, Err(ClientError::Status(status)) if status.code() == tonic::Code::Unauthenticated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_rejections_kept_in_the_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());

    let mut fridge = session(&addr, "FR-000001").await;
    assert_eq!(fridge.highest_durable_seq, 0);
    let counted = encode(&event("FR-000001", 1, 0, Payload::StockCounted { sku: "cola".into(), qty: 10 }));
    let mut other_fridge = taken("FR-000001", 5, 1);
    other_fridge.source_id = "FR-000002".into();
    let mut no_payload = taken("FR-000001", 6, 1);
    no_payload.payload = None;
    let batch = vec![
        counted,
        taken("FR-000001", 2, 3),
        taken("FR-000001", 3, 0),
        taken("FR-000001", 4, 2),
        other_fridge,
        no_payload,
    ];
    fridge.send(7, batch).await.unwrap();
    let ack = fridge.ack().await.unwrap();
    assert_eq!(ack.batch_id, 7);
    assert_eq!(ack.accepted, vec![1, 2, 4]);
    assert_eq!(ack.highest_durable_seq, 4);
    let reasons: Vec<(u64, RejectReason)> =
        ack.rejected.iter().map(|r| (r.seq, RejectReason::try_from(r.code).unwrap())).collect();
    assert_eq!(
        reasons,
        vec![(3, RejectReason::InvalidQty), (5, RejectReason::WrongSource), (6, RejectReason::UnknownPayload)]
    );
    assert!(ack.rejected.iter().all(|r| !r.message.is_empty()));

    // A second batch in flight before the first ack: acks come in order.
    fridge.send(8, vec![taken("FR-000001", 7, 1)]).await.unwrap();
    fridge.send(9, vec![taken("FR-000001", 8, 1)]).await.unwrap();
    assert_eq!(fridge.ack().await.unwrap().batch_id, 8);
    assert_eq!(fridge.ack().await.unwrap().batch_id, 9);

    server.caught_up(std::time::Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(
        query_csv(dir.path(), "SELECT seq, reason_code, principal FROM rejected ORDER BY seq").await,
        "seq,reason_code,principal\n3,invalid_qty,FR-000001\n5,wrong_source,FR-000001\n6,unknown_payload,FR-000001\n"
    );
    assert_eq!(
        query_csv(dir.path(), "SELECT seq, kind, fridge_id FROM events ORDER BY seq").await,
        "seq,kind,fridge_id\n1,stock_counted,FR-000001\n2,item_taken,FR-000001\n4,item_taken,FR-000001\n7,item_taken,FR-000001\n8,item_taken,FR-000001\n"
    );
    assert_eq!(query_csv(dir.path(), "SELECT * FROM inventory_now").await, "fridge_id,sku,on_hand\nFR-000001,cola,3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let channel = client::channel(&addr).await.unwrap();

    // Another fridge's token, a made-up token, no token.
    let as_other = Session::open(channel.clone(), "FR-000002", &fridge_token("FR-000001")).await;
    assert!(unauthenticated(as_other));
    assert!(unauthenticated(Session::open(channel.clone(), "FR-000001", "00ff").await));
    let mut raw = proto::fridge_gateway_client::FridgeGatewayClient::new(channel.clone());
    let hello = proto::FridgeMessage {
        kind: Some(proto::fridge_message::Kind::Hello(proto::Hello { fridge_id: "FR-000001".into(), incarnation: 0 })),
    };
    let refused = raw.stream(tokio_stream::iter(vec![hello])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A fridge's token does not open the back office.
    let price = encode(&coldstream_pipelines::Event {
        source_id: "FR-000001".into(),
        incarnation: 0,
        seq: 1,
        event_time: 1_700_000_000_000_000,
        payload: Payload::PriceChanged { sku: "cola".into(), price_cents: 100, fridge_id: None },
    });
    let result = client::publish(channel.clone(), "FR-000001", &fridge_token("FR-000001"), vec![price]).await;
    assert!(matches!(result, Err(ClientError::Status(s)) if s.code() == tonic::Code::Unauthenticated));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = client::channel(&format!("http://{}", server.addr())).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest { service: "coldstream.v1.FridgeGateway".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_while_the_workers_let_commits_gather_reaches_the_views_with_no_commit_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut fridge = session(&format!("http://{}", server.addr()), "FR-000001").await;
    fridge
        .send(1, vec![encode(&event("FR-000001", 1, 0, Payload::StockCounted { sku: "cola".into(), qty: 100 }))])
        .await
        .unwrap();
    fridge.ack().await.unwrap();
    // Each round commits right after the views took the one before, i.e.
    // within the workers' pace, and then nothing more is committed: the
    // views must still get there.
    for seq in 2..=21 {
        server.caught_up(std::time::Duration::from_secs(30)).await.unwrap();
        fridge.send(seq, vec![taken("FR-000001", seq, 1)]).await.unwrap();
        assert_eq!(fridge.ack().await.unwrap().accepted, vec![seq]);
    }
    let status = server.caught_up(std::time::Duration::from_secs(30)).await.unwrap();
    assert!(status.views_frontier > status.last_ingest_ms.unwrap());
    server.shutdown().await.unwrap();
    assert_eq!(
        query_csv(dir.path(), "SELECT * FROM inventory_now").await,
        "fridge_id,sku,on_hand\nFR-000001,cola,80\n"
    );
}
