//! UDFs written for Arroyo: built by `coldstream udf build` from
//! `examples/udfs/` and `tests/udfs/` (each its own cargo workspace, sharing
//! one target directory), loaded into `coldstream query`, the Flight SQL
//! endpoint and the restock policy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use coldstream::flight_sql::{FlightSqlConfig, FlightSqlServer, Limits};
use coldstream::udf::LoadedUdf;
use coldstream_sources::auth::Principal;

use crate::support::{ServerProcess, binary, query_csv, tokens};

/// The libraries of the UDF crates, built once per test run.
struct Built {
    margin: PathBuf,
    seasonal: PathBuf,
    builtin: PathBuf,
    explode: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
        let build = |dir: &str| {
            let output =
                binary().args(["udf", "build"]).arg(root.join(dir)).arg("--target-dir").arg(&target).output().unwrap();
            assert!(output.status.success(), "building {dir}: {}", String::from_utf8_lossy(&output.stderr));
            PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        };
        Built {
            margin: build("examples/udfs/margin"),
            seasonal: build("examples/udfs/seasonal_reorder_point"),
            builtin: build("tests/udfs/builtin_reorder_point"),
            explode: build("tests/udfs/explode"),
        }
    })
}

fn query(data: &Path, udf: &Path, sql: &str) -> std::process::Output {
    binary().args(["query", "--format", "csv", "--data"]).arg(data).arg("--udf").arg(udf).arg(sql).output().unwrap()
}

fn endpoint(dir: &Path, udfs: &[&Path]) -> FlightSqlServer {
    FlightSqlServer::start(FlightSqlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dirs: vec![dir.to_path_buf()],
        tokens: tokens(),
        tls: None,
        limits: Limits { memory_bytes: 256 << 20, timeout: Duration::from_secs(60), concurrent: 4 },
        udfs: udfs.iter().map(|path| LoadedUdf::load(path).unwrap()).collect(),
    })
    .unwrap()
}

async fn flight_csv(server: &FlightSqlServer, sql: &str) -> Result<String, String> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use futures::TryStreamExt;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr())).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {}", tokens().issue(&Principal::Analyst("ana".into()))));
    let info = client.execute(sql.to_owned(), None).await.map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.map_err(|e| e.to_string())?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(|e| e.to_string())?);
    }
    Ok(coldstream::query::render(&batches, coldstream::query::Format::Csv).unwrap())
}

/// The scaffold is a crate that builds, and its function's signature is
/// read from its source.
#[test]
fn udf_new_writes_a_crate_whose_signature_is_read_from_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("double_it");
    let output = binary().args(["udf", "new", "double_it", "--dir"]).arg(&crate_dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    let manifest = coldstream::udf::parse_signature(&source).unwrap();
    assert_eq!(manifest.name, "double_it");
    let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("arroyo-udf-plugin") && cargo.contains("cdylib") && cargo.contains("[workspace]"));
    let refused = crate::cli::stderr_of(&["udf", "new", "Bad-Name"]);
    assert!(refused.contains("not a SQL function name") && refused.trim_end().lines().count() == 1, "{refused}");
}

/// `margin` from `examples/udfs/` in `coldstream query` and over Flight SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_udf_is_called_from_coldstream_query_and_over_flight_sql() {
    let built = built();
    let dir = tempfile::tempdir().unwrap();
    crate::golden::fixture(dir.path());
    let literal = "SELECT margin(500, 350) AS m, margin(0, 1) AS none";
    let output = query(dir.path(), &built.margin, literal);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "m,none\n0.3,\n");
    let over_rows = "SELECT fridge_id, round(margin(captured_cents, captured_cents / 4), 2) AS m \
                     FROM revenue_now ORDER BY fridge_id, hour LIMIT 2";
    let output = query(dir.path(), &built.margin, over_rows);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, "fridge_id,m\nFR-000001,0.75\nFR-000001,0.75\n");
    let server = endpoint(dir.path(), &[&built.margin]);
    assert_eq!(flight_csv(&server, over_rows).await.unwrap(), printed);
    let without = crate::cli::stderr_of(&["query", "--data", dir.path().to_str().unwrap(), literal]);
    assert!(without.contains("margin"), "{without}");
}

/// A UDF that panics, or returns another type than its manifest says, is a
/// one-line query error; the endpoint goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_mistyped_udf_is_a_one_line_query_error_and_the_server_stays_up() {
    let built = built();
    let dir = tempfile::tempdir().unwrap();
    crate::golden::fixture(dir.path());
    let panics = "SELECT explode(x) AS y FROM (VALUES (1), (5)) AS t(x)";
    let output = query(dir.path(), &built.explode, panics);
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    let last = error.trim_end().lines().last().unwrap();
    assert!(last.starts_with("error:") && last.contains("the UDF explode panicked"), "{error}");

    let server = endpoint(dir.path(), &[&built.explode]);
    let error = flight_csv(&server, panics).await.unwrap_err();
    assert!(error.contains("the UDF explode panicked"), "{error}");
    assert_eq!(flight_csv(&server, "SELECT explode(2) AS y").await.unwrap(), "y\n2\n", "the endpoint is up");
    assert_eq!(flight_csv(&server, "SELECT count(*) AS n FROM inventory_now").await.unwrap().lines().count(), 2);

    // The same library with a manifest that promises a float.
    let lied = tempfile::tempdir().unwrap();
    let library = lied.path().join(built.explode.file_name().unwrap());
    std::fs::copy(&built.explode, &library).unwrap();
    let manifest = std::fs::read_to_string(coldstream::udf::manifest_path(&built.explode)).unwrap();
    let (head, tail) = manifest.split_at(manifest.find("\"returns\"").unwrap());
    std::fs::write(coldstream::udf::manifest_path(&library), format!("{head}{}", tail.replacen("i64", "f64", 1)))
        .unwrap();
    let output = query(dir.path(), &library, "SELECT explode(1) AS y");
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("returned Int64 where its signature says Float64"), "{error}");
    assert_eq!(error.trim_end().lines().count(), 1, "{error}");
}

/// The config of a server whose restock policy is the UDF `name`.
fn policy_config(dir: &Path, udfs: &[&Path], name: Option<&str>) -> PathBuf {
    let udfs: Vec<String> = udfs.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let policy = name.map_or(String::new(), |n| format!("reorder_point_udf = \"{n}\"\n"));
    let text = format!("[parquet]\nroll_seconds = 1\n\n[sql]\nudfs = [{}]\n\n[views]\n{policy}", udfs.join(", "));
    let path = dir.join("coldstream.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const RESTOCK: &str = "SELECT * FROM restock_orders ORDER BY time, fridge_id, sku, order_id, qty, diff";

/// The built-in reorder point written as a UDF gives the built-in policy's
/// restock orders byte for byte; the seasonal example gives others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_policy_written_as_a_udf_gives_byte_identical_restock_orders() {
    let built = built();
    let mut changelogs = Vec::new();
    for policy in [None, Some("builtin_reorder_point"), Some("seasonal_reorder_point")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::support::config(dir.path());
        config.sql.udfs = vec![built.builtin.clone(), built.seasonal.clone()];
        config.views.reorder_point_udf = policy.map(str::to_owned);
        crate::golden::fixture_with(dir.path(), config.views().unwrap());
        changelogs.push(query_csv(dir.path(), RESTOCK).await);
    }
    assert!(changelogs[0].lines().count() > 10, "the fleet opens restock orders: {}", changelogs[0]);
    assert_eq!(changelogs[1], changelogs[0], "the built-in policy as a UDF");
    assert_ne!(changelogs[2], changelogs[0], "the seasonal policy orders otherwise");
}

/// With the seasonal policy, a server SIGKILLed under load and restarted
/// has the restock orders a replay of its archive computes; a changed
/// policy is refused until `coldstream rebuild`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_udf_gives_the_same_orders_after_a_sigkill_and_on_replay() {
    let built = built();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = policy_config(dir.path(), &[&built.seasonal], Some("seasonal_reorder_point"));
    let config_arg = config.to_str().unwrap();
    let server = ServerProcess::start_with(&data, &["--config", config_arg], "warn");
    let target = server.addr.clone();
    let fleet = tokio::spawn(async move { crate::recovery::run_fleet(&target, 32, 40_000).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.kill();
    let _ = fleet.await; // the fleet may finish or fail with the server gone
    let server = ServerProcess::start_with(&data, &["--config", config_arg], "warn");
    crate::recovery::run_fleet(&server.addr, 32, 40_000).await;
    server.stop();
    let after_restart = query_csv(&data, RESTOCK).await;
    assert!(after_restart.lines().count() > 10, "{after_restart}");

    let other = policy_config(dir.path(), &[&built.seasonal], None);
    let refused = binary()
        .args(["run", "--listen", "127.0.0.1:0", "--config", other.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .env("COLDSTREAM_SECRET", crate::support::TEST_SECRET)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let refused = String::from_utf8(refused.stderr).unwrap();
    assert!(refused.contains("seasonal_reorder_point") && refused.contains("coldstream rebuild"), "{refused}");

    let config = policy_config(dir.path(), &[&built.seasonal], Some("seasonal_reorder_point"));
    let output = binary()
        .args(["rebuild", "--config", config.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .env("COLDSTREAM_SECRET", crate::support::TEST_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(query_csv(&data, RESTOCK).await, after_restart, "a replay of the archive gives the same orders");
}
