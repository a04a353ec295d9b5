//! The Flight SQL endpoint with real clients over TCP: arrow-flight's Rust
//! client, and ADBC's Flight SQL driver from PyPI (`.ci/run` installs it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use coldstream::flight_sql::{FlightSqlConfig, FlightSqlServer, Limits};
use coldstream::query;
use coldstream_sources::auth::{Principal, Tokens};
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::support::{query_csv, tokens};

fn analyst_token(name: &str) -> String {
    tokens().issue(&Principal::Analyst(name.into()))
}

fn limits(memory_mb: usize) -> Limits {
    Limits { memory_bytes: memory_mb << 20, timeout: Duration::from_secs(120), concurrent: 4 }
}

/// An endpoint over `dir` on a free loopback port.
fn endpoint(dir: &Path, memory_mb: usize) -> FlightSqlServer {
    FlightSqlServer::start(FlightSqlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dirs: vec![dir.to_path_buf()],
        tokens: tokens(),
        tls: None,
        limits: limits(memory_mb),
        udfs: Vec::new(),
    })
    .unwrap()
}

async fn client(addr: std::net::SocketAddr, token: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {token}"));
    client
}

/// Every batch of every endpoint of `info`, as the client receives them.
async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(|e| e.to_string())?);
    }
    Ok(batches)
}

async fn sql(client: &mut FlightSqlServiceClient<Channel>, text: &str) -> Result<Vec<RecordBatch>, String> {
    let info = client.execute(text.to_owned(), None).await.map_err(|e| e.to_string())?;
    fetch(client, info).await
}

fn csv(batches: &[RecordBatch]) -> String {
    query::render(batches, query::Format::Csv).unwrap()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// An analyst browses the catalog, runs every canned query and gets what
/// `coldstream query` prints, streams the whole `events` table in batches,
/// and runs a prepared statement with a parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_browses_and_queries_the_tables_of_coldstream_query_over_flight_sql() {
    let dir = tempfile::tempdir().unwrap();
    crate::golden::fixture(dir.path());
    let server = endpoint(dir.path(), 256);
    let mut client = client(server.addr(), &analyst_token("ana")).await;

    let catalogs = client.get_catalogs().await.unwrap();
    assert_eq!(csv(&fetch(&mut client, catalogs).await.unwrap()), "catalog_name\ndatafusion\n");
    let schemas = client.get_db_schemas(CommandGetDbSchemas::default()).await.unwrap();
    assert!(csv(&fetch(&mut client, schemas).await.unwrap()).contains("datafusion,public"));
    let tables =
        client.get_tables(CommandGetTables { include_schema: true, ..CommandGetTables::default() }).await.unwrap();
    let tables = fetch(&mut client, tables).await.unwrap();
    let listed: Vec<String> = tables
        .iter()
        .flat_map(|batch| {
            let names = batch.column_by_name("table_name").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            names.iter().map(|name| name.unwrap().to_owned()).collect::<Vec<_>>()
        })
        .collect();
    let mut expected = vec!["events".to_owned(), "rejected".to_owned(), "webhooks_failed".to_owned()];
    for view in coldstream_pipelines::views::NAMES {
        expected.extend([view.to_string(), format!("{view}_now")]);
    }
    for table in &expected {
        assert!(listed.contains(table), "GetTables lists {table}: {listed:?}");
    }
    assert!(tables[0].column_by_name("table_schema").is_some(), "GetTables gives each table's schema");
    let info = client.get_sql_info(vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly]).await.unwrap();
    assert_eq!(rows(&fetch(&mut client, info).await.unwrap()), 2);

    for file in crate::golden::queries() {
        let text = std::fs::read_to_string(&file).unwrap();
        let over_flight = csv(&sql(&mut client, &text).await.unwrap());
        assert_eq!(over_flight, query_csv(dir.path(), &text).await, "{}", file.display());
    }

    let fresh = "SELECT count(*) AS n FROM coldstream_status WHERE complete_before IS NOT NULL AND files > 0";
    let expected = format!("n\n{}\n", coldstream_pipelines::views::NAMES.len());
    assert_eq!(csv(&sql(&mut client, fresh).await.unwrap()), expected, "each view says how fresh it is");

    let events = sql(&mut client, "SELECT * FROM events").await.unwrap();
    let archived = query_csv(dir.path(), "SELECT count(*) AS n FROM events").await;
    assert_eq!(format!("n\n{}\n", rows(&events)), archived);
    assert!(events.len() >= 3, "streamed in batches, not as one: {} batches", events.len());
    assert!(events.iter().all(|b| b.num_rows() <= 8192), "no batch above DataFusion's batch size");

    let mut prepared =
        client.prepare("SELECT count(*) AS n FROM events WHERE fridge_id = $1".into(), None).await.unwrap();
    assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 1);
    let parameter = Schema::new(vec![Field::new("$1", DataType::Utf8, false)]);
    let bound =
        RecordBatch::try_new(Arc::new(parameter), vec![Arc::new(StringArray::from(vec!["FR-000003"]))]).unwrap();
    prepared.set_parameters(bound).unwrap();
    let info = prepared.execute().await.unwrap();
    let counted = csv(&fetch(&mut client, info).await.unwrap());
    assert_eq!(counted, query_csv(dir.path(), "SELECT count(*) AS n FROM events WHERE fridge_id = 'FR-000003'").await);
    assert_ne!(counted, "n\n0\n");
    prepared.close().await.unwrap();
}

/// Only an analyst's token of this fleet queries, and a query only reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_analysts_token_queries_and_a_query_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = endpoint(dir.path(), 64);
    let forged = Tokens::new("another fleet's secret").issue(&Principal::Analyst("ana".into()));
    let fridge = tokens().issue(&Principal::Fridge("FR-000001".into()));
    let back_office = tokens().issue(&Principal::BackOffice("erp".into()));
    for (token, refusal) in [
        (forged.as_str(), "signature does not match"),
        (fridge.as_str(), "cannot query"),
        (back_office.as_str(), "cannot query"),
        ("not-a-token", "not a coldstream token"),
    ] {
        let mut caller = client(server.addr(), token).await;
        let error = sql(&mut caller, "SELECT count(*) FROM events").await.unwrap_err();
        assert!(error.contains(refusal), "{refusal}: {error}");
    }
    let mut analyst = client(server.addr(), &analyst_token("ana")).await;
    for statement in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let error = sql(&mut analyst, statement).await.unwrap_err();
        assert!(error.contains("read-only"), "{statement}: {error}");
    }
    assert_eq!(csv(&sql(&mut analyst, "SELECT count(*) AS n FROM events").await.unwrap()), "n\n0\n");
}

/// A query that needs more than its memory limit fails, alone: the fleet
/// goes on being acked, every view catches up, and the next query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_memory_limit_fails_alone_while_the_pipeline_keeps_ingesting() {
    use coldstream_pipelines::fleet::{Fleet, FleetSpec};
    use coldstream_sources::simulator::{self as simulate, RunSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path());
    config.flight_sql.enabled = true;
    config.flight_sql.listen = "127.0.0.1:0".parse().unwrap();
    config.flight_sql.memory_limit_mb = 16;
    let server = coldstream::server::Server::start(&config).await.unwrap();
    let spec =
        FleetSpec { seed: 5, fridges: 4, events: 4_000, start_us: 1_772_323_200_000_000, bad_rate: 0.0, skus: None };
    let run = RunSpec {
        target: format!("http://{}", server.addr()),
        tokens: tokens(),
        tls: None,
        rate: Some(1_000.0),
        batch: 50,
        progress: false,
    };
    let fleet = tokio::spawn(async move { simulate::run(Fleet::new(&spec), &run, spec.events).await.unwrap() });
    let mut analyst = client(server.flight_sql_addr().expect("enabled"), &analyst_token("ana")).await;
    // A window over 5 million rows in random order: the sort holds them all.
    let heavy = "SELECT max(r) AS m FROM \
                 (SELECT row_number() OVER (ORDER BY v * random()) AS r FROM generate_series(1, 5000000) AS t(v))";
    let error = sql(&mut analyst, heavy).await.unwrap_err();
    assert!(error.contains("Resources exhausted"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
    let summary = fleet.await.unwrap();
    assert_eq!(summary.delivered.rejected, 0);
    assert!(summary.delivered.accepted >= 4_000, "every event acked while the query ran: {:?}", summary.delivered);
    server.caught_up(Duration::from_secs(120)).await.expect("the views keep up");
    // The next query runs, and sees every acked event once the archive's file rolls.
    let expected = format!("n\n{}\n", summary.delivered.accepted);
    let mut counted = String::new();
    for _ in 0..300 {
        counted = csv(&sql(&mut analyst, "SELECT count(*) AS n FROM events").await.unwrap());
        if counted == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, expected);
    server.shutdown().await.unwrap();
}

fn adbc_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql.dbapi, pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// ADBC's Flight SQL driver (what pandas, polars and Superset use) lists
/// the tables and gets every canned query's golden result, type for type;
/// binds a parameter; and is refused a DDL statement and a forged token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbcs_flight_sql_driver_gets_the_golden_results() {
    if !adbc_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must install adbc-driver-flightsql and pyarrow");
        eprintln!("skipped: ADBC is not installed (python3 -m pip install adbc-driver-flightsql pyarrow)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    crate::golden::fixture(dir.path());
    let server = endpoint(dir.path(), 256);
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/clients/flight_sql_adbc.py");
    let (addr, token, queries) = (format!("grpc://{}", server.addr()), analyst_token("ana"), root.join("queries"));
    let output = tokio::task::spawn_blocking({
        let out = out.path().to_path_buf();
        move || std::process::Command::new("python3").arg(script).arg(addr).arg(token).arg(queries).arg(out).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tables: Vec<&str> = summary["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for table in ["events", "rejected", "webhooks_failed", "inventory", "inventory_now", "restock_orders_now"] {
        assert!(tables.contains(&table), "{table}: {tables:?}");
    }
    assert!(summary["events_schema"].as_array().unwrap().iter().any(|c| c == "fridge_id"));
    for file in crate::golden::queries() {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let received = std::fs::File::open(out.path().join(format!("{stem}.arrow"))).unwrap();
        let batches: Vec<RecordBatch> =
            arrow::ipc::reader::FileReader::try_new(received, None).unwrap().map(Result::unwrap).collect();
        let expected = std::fs::read_to_string(root.join("queries/expected").join(format!("{stem}.csv"))).unwrap();
        assert_eq!(csv(&batches), expected, "{stem} over ADBC");
    }
    let fr2 = query_csv(dir.path(), "SELECT count(*) AS n FROM events WHERE fridge_id = 'FR-000002'").await;
    assert_eq!(format!("n\n{}\n", summary["prepared"]), fr2);
    assert!(summary["ddl"].as_str().unwrap().contains("read-only"), "{}", summary["ddl"]);
    assert!(summary["forged"].as_str().unwrap().contains("signature does not match"), "{}", summary["forged"]);
}

/// The gateway refuses an analyst's token: analysts send no events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_an_analysts_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::start(dir.path()).await;
    let channel = coldstream_sources::client::channel(&format!("http://{}", server.addr())).await.unwrap();
    let refused = coldstream_sources::client::Session::open(channel, "ana", &analyst_token("ana")).await;
    match refused {
        Err(coldstream_sources::client::ClientError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
            assert!(status.message().contains("analyst"), "{status}");
        }
        other => panic!("an analyst's stream was not refused: {:?}", other.err()),
    }
    server.shutdown().await.unwrap();
}
