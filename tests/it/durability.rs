//! An ack means durable: SIGKILL right after acks loses nothing, and
//! resent events are acked as duplicates without being counted twice.

use std::collections::BTreeMap;

use coldstream_pipelines::views::inventory_reference;
use coldstream_pipelines::{Event, Payload};
use coldstream_sources::client::Fridge;
use coldstream_sources::convert::encode;

use crate::support::{ServerProcess, event, fridge_token, query_csv, session, start};

/// A deterministic mix of counts, restocks, takes and returns for one fridge.
pub(crate) fn history(fridge: &str, count: u64) -> Vec<Event> {
    (1..=count)
        .map(|seq| {
            let sku = ["cola", "water", "salad"][(seq % 3) as usize].to_owned();
            let payload = match seq % 10 {
                0 => Payload::StockCounted { sku, qty: (seq % 17) as i64 },
                1 | 2 => Payload::RestockDelivered { order_id: format!("o{seq}"), sku, qty: 5 },
                3 => Payload::ItemReturned { session_id: format!("s{seq}"), sku, qty: 1 },
                _ => Payload::ItemTaken { session_id: format!("s{seq}"), sku, qty: 1 + (seq % 2) as i64 },
            };
            event(fridge, seq, (seq / 4) as i64, payload)
        })
        .collect()
}

pub(crate) fn csv_of(inventory: &BTreeMap<(String, String), i64>) -> String {
    let mut csv = "fridge_id,sku,on_hand\n".to_owned();
    for ((fridge, sku), on_hand) in inventory {
        csv.push_str(&format!("{fridge},{sku},{on_hand}\n"));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let fridges = ["FR-000001", "FR-000002", "FR-000003"];
    let mut acked: Vec<Event> = Vec::new();

    let server = ServerProcess::start(dir.path());
    for fridge in fridges {
        let events = history(fridge, 400);
        let mut session = session(&server.addr, fridge).await;
        for (i, chunk) in events.chunks(40).enumerate() {
            session.send(i as u64, chunk.iter().map(encode).collect()).await.unwrap();
            let ack = session.ack().await.unwrap();
            assert_eq!(ack.accepted.len(), chunk.len());
            acked.extend(chunk.iter().cloned());
        }
    }
    // Killed right after the last ack: nothing had a chance to flush.
    server.kill();

    let server = ServerProcess::start(dir.path());
    for fridge in fridges {
        assert_eq!(session(&server.addr, fridge).await.highest_durable_seq, 400, "{fridge} after restart");
    }
    server.stop();

    let total = acked.len();
    assert_eq!(
        query_csv(
            dir.path(),
            "SELECT COUNT(*) AS n, COUNT(DISTINCT source_id || '/' || CAST(seq AS VARCHAR)) AS distinct_n FROM events"
        )
        .await,
        format!("n,distinct_n\n{total},{total}\n")
    );
    assert_eq!(
        query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await,
        csv_of(&inventory_reference(&acked))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_events_are_acked_as_duplicates_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = format!("http://{}", server.addr());
    let events = history("FR-000009", 60);

    // The first 40 arrive; the fridge then loses the connection before
    // hearing the ack for 21..=40 and, on reconnect, sends 21..=60 again.
    let mut fridge = Fridge::new(addr.clone(), "FR-000009", fridge_token("FR-000009"));
    fridge.send(events[..20].iter().map(encode).collect()).await.unwrap();
    let mut raw = session(&addr, "FR-000009").await;
    raw.send(1, events[20..40].iter().map(encode).collect()).await.unwrap();
    assert_eq!(raw.ack().await.unwrap().accepted.len(), 20);
    drop(raw);

    let mut raw = session(&addr, "FR-000009").await;
    assert_eq!(raw.highest_durable_seq, 40);
    raw.send(2, events[20..].iter().map(encode).collect()).await.unwrap();
    let ack = raw.ack().await.unwrap();
    assert_eq!(ack.duplicates, (21..=40).collect::<Vec<u64>>());
    assert_eq!(ack.accepted, (41..=60).collect::<Vec<u64>>());
    assert_eq!(ack.highest_durable_seq, 60);

    // The resilient client drops what Welcome says is durable.
    fridge.disconnect();
    let tally = fridge.send(events[50..].iter().map(encode).collect()).await.unwrap();
    assert_eq!((tally.accepted, tally.duplicates), (0, 10));

    server.caught_up(std::time::Duration::from_secs(60)).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(query_csv(dir.path(), "SELECT COUNT(*) AS n FROM events").await, "n\n60\n");
    assert_eq!(
        query_csv(dir.path(), "SELECT * FROM inventory_now ORDER BY fridge_id, sku").await,
        csv_of(&inventory_reference(&events))
    );
}
