//! The command line: bad arguments and bad queries are one-line errors.

use crate::support::binary;

pub(crate) fn stderr_of(args: &[&str]) -> String {
    let output = binary().args(args).output().unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn a_bad_query_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let message = stderr_of(&["query", "--data", data, "SELEC nonsense"]);
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(message.starts_with("error:"), "{message}");
    let message = stderr_of(&["query", "--data", data, "SELECT * FROM no_such_table"]);
    assert!(message.contains("no_such_table"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

#[test]
fn bad_arguments_and_configs_are_one_line_errors() {
    let message = stderr_of(&["simulate", "--rate", "fast"]);
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[parquet]\nroll_secs = 3\n").unwrap();
    let message = stderr_of(&["run", "--config", config.to_str().unwrap()]);
    assert!(message.contains("roll_secs"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    std::fs::write(&config, "[webhooks.alerts]\nurl = \"ftp://example.com/x\"\nsecret = \"whsec_x\"\n").unwrap();
    let message = stderr_of(&["run", "--config", config.to_str().unwrap()]);
    assert!(message.contains("webhooks.alerts.url"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    std::fs::write(&config, "[auth]\nsecret = \"a-config-secret-0123\"\n[tls]\ncert = \"/nonexistent/gateway.pem\"\n")
        .unwrap();
    let message = stderr_of(&["run", "--config", config.to_str().unwrap()]);
    assert!(message.contains("tls.cert and tls.key"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    let secret = dir.path().join("endpoint.secret");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let message = stderr_of(&["receive", "--listen", "127.0.0.1:0", "--secret-file", secret.to_str().unwrap()]);
    assert!(message.contains("whsec_"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

#[test]
fn secrets_never_come_from_the_command_line_and_an_empty_or_development_one_is_refused() {
    // A flag would show the secret to every user of the machine in `ps`.
    let message = stderr_of(&["token", "--fridge", "FR-000001", "--secret", "a-secret-of-16-chars"]);
    assert!(message.contains("--secret"), "{message}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (value, expected) in [("", "empty"), (coldstream::config::DEV_SECRET, "development secret")] {
        let output = binary()
            .args(["run", "--listen", "127.0.0.1:0", "--data", data])
            .env("COLDSTREAM_SECRET", value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "run started with COLDSTREAM_SECRET={value:?}");
        let message = String::from_utf8(output.stderr).unwrap();
        assert!(message.contains(expected), "{message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    }
    // The token command reads the secret from a file.
    let file = dir.path().join("fleet.secret");
    std::fs::write(&file, "a-fleet-secret-of-20\n").unwrap();
    let output =
        binary().args(["token", "--fridge", "FR-000001", "--secret-file", file.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let tokens = coldstream_sources::auth::Tokens::new("a-fleet-secret-of-20");
    assert!(tokens.verify(token.trim(), coldstream_sources::auth::now_s()).is_ok(), "{token}");
}

#[test]
fn the_default_config_is_printed_and_parses() {
    let output = binary().args(["config", "default"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    coldstream::config::Config::parse(&text, "printed").unwrap();
}

/// `coldstream demo` end to end on a small fleet: it sends, waits for
/// every view and webhook, reports, and leaves data to query.
#[test]
fn the_demo_runs_end_to_end_on_a_small_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = binary()
        .args(["demo", "--fridges", "3", "--events", "3000", "--workers", "2", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in ["fleet: sent", "end to end:", "webhooks:"] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let count = binary()
        .args(["query", "--format", "csv", "--data"])
        .arg(&data)
        .arg("SELECT COUNT(*) AS n FROM events")
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&count.stdout);
    let archived: u64 = csv.lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("{csv}"));
    assert!(archived >= 3000, "the demo's events are archived: {csv}");
}
