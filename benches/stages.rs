//! Criterion benches of each stage on deterministic data (50 simulated
//! fridges, seed 1):
//!
//! - `grpc_decode`: a 500-event `FridgeMessage` batch from its wire bytes
//!   to validated events, as the gateway does for every batch;
//! - `log_append`: one 500-event group commit to the embedded log, with an
//!   fsync (the default) and without;
//! - `views`: each view's dataflow over 20,000 events arriving in batches
//!   of 1,000, with the views it reads (restock reads inventory and
//!   sales_7d; inventory reads the cold chain), and every view together, on
//!   2 workers;
//! - `parquet`: 10,000 events to one `events/` Parquet file.
//!
//! Throughput is reported in events per second. `cargo bench --bench stages`
//! (add a name, e.g. `-- views`, to run one group).

use std::time::Duration;

use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_pipelines::harness::{run_view, run_views};
use coldstream_pipelines::operators::OperatorHooks;
use coldstream_pipelines::views::{ViewConfig, cold_chain, inventory, restock_orders, sales_7d, sessions_and_revenue};
use coldstream_pipelines::{Event, Time};
use coldstream_sinks::ParquetConfig;
use coldstream_sinks::parquet::{archive::events_batch, write_part};
use coldstream_sources::convert::{decode, encode};
use coldstream_sources::log::EventLog;
use coldstream_sources::log::embedded::{EmbeddedConfig, EmbeddedLog};
use coldstream_sources::proto::{EventBatch, FridgeMessage, fridge_message};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

fn events(n: u64) -> Vec<Event> {
    let spec =
        FleetSpec { seed: 1, fridges: 50, events: n, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    Fleet::new(&spec).all_events()
}

fn grpc_decode(c: &mut Criterion) {
    let batch = events(500);
    let wire = FridgeMessage {
        kind: Some(fridge_message::Kind::Batch(EventBatch { batch_id: 1, events: batch.iter().map(encode).collect() })),
    }
    .encode_to_vec();
    let mut group = c.benchmark_group("grpc_decode");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("500-event batch", |b| {
        b.iter(|| {
            let message = FridgeMessage::decode(wire.as_slice()).expect("the batch decodes");
            let Some(fridge_message::Kind::Batch(batch)) = message.kind else { panic!("a batch") };
            batch.events.into_iter().filter_map(|e| decode(e).ok()).count()
        })
    });
    group.finish();
}

fn log_append(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = events(500).iter().map(|e| encode(e).encode_to_vec()).collect();
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    for (name, fsync) in [("500-event commit, fsync", true), ("500-event commit, no fsync", false)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).expect("open the log");
        let mut commit = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                commit += 1;
                log.append(commit, &payloads).expect("append");
                if fsync {
                    log.sync().expect("sync");
                }
            })
        });
    }
    group.finish();
}

type Arrivals = Vec<(Time, Vec<Event>)>;

fn views(c: &mut Criterion) {
    let all_events = events(20_000);
    let arrivals: Arrivals =
        all_events.chunks(1_000).enumerate().map(|(i, chunk)| (i as Time + 1, chunk.to_vec())).collect();
    let config = ViewConfig::default();
    let (horizon, lead, wait) = (config.horizon_us, config.lead_time_days, config.payment_wait_us);
    let hooks = OperatorHooks::default();
    let mut group = c.benchmark_group("views");
    group.throughput(Throughput::Elements(all_events.len() as u64)).sample_size(10);
    let input = || arrivals.clone();
    // One view's dataflow, fed the same arrivals each iteration. A macro
    // rather than a function: `run_view` needs the view closure written
    // where its higher-ranked signature can be inferred.
    macro_rules! bench_view {
        ($name:expr, |$events:ident, $hooks:ident| $view:expr) => {
            group.bench_function($name, |b| {
                b.iter_batched(
                    input,
                    |a| {
                        let $hooks = hooks.clone();
                        run_view(2, a, move |$events| $view)
                    },
                    BatchSize::LargeInput,
                )
            })
        };
    }
    bench_view!("cold_chain", |e, hooks| cold_chain(e, horizon, &hooks).0);
    bench_view!("sessions_and_revenue", |e, hooks| sessions_and_revenue(e, horizon, wait, &hooks).0);
    bench_view!("sales_7d", |e, hooks| sales_7d(e, &hooks));
    bench_view!("inventory (with the cold chain)", |e, hooks| {
        let (excursions, settled) = cold_chain(e.clone(), horizon, &hooks);
        inventory(e, excursions, settled, horizon, &hooks)
    });
    bench_view!("restock (with inventory and sales_7d)", |e, hooks| {
        let (excursions, settled) = cold_chain(e.clone(), horizon, &hooks);
        let on_hand = inventory(e.clone(), excursions, settled, horizon, &hooks);
        let sold = sales_7d(e.clone(), &hooks);
        restock_orders(e, on_hand, sold, lead, None, &hooks)
    });
    group.bench_function("every view", |b| {
        b.iter_batched(input, |a| run_views(2, a, ViewConfig::default()), BatchSize::LargeInput)
    });
    group.finish();
}

fn parquet(c: &mut Criterion) {
    let rows: Vec<(u64, Event)> = events(10_000).into_iter().enumerate().map(|(i, e)| (i as u64, e)).collect();
    let refs: Vec<&(u64, Event)> = rows.iter().collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = ParquetConfig::default();
    let mut group = c.benchmark_group("parquet");
    group.throughput(Throughput::Elements(rows.len() as u64)).sample_size(20);
    let mut file = 0u64;
    group.bench_function("10,000 events to one events/ file", |b| {
        b.iter(|| {
            file += 1;
            let batch = events_batch(&refs).expect("the events make a batch");
            write_part(dir.path(), &format!("part-{file}.parquet"), &batch, &config).expect("the file is written")
        })
    });
    group.finish();
}

criterion_group! {
    name = stages;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = grpc_decode, log_append, views, parquet
}
criterion_main!(stages);
