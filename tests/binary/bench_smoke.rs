//! The short CI bench: `sluice bench --events 2000 --json --with-http-baseline` against
//! `sluice dev` started by the bench itself must deliver every event exactly once with no
//! error, and report the loopback baselines around the run. No timing is asserted: CI
//! machines vary too much for that.

use std::process::Command;

/// Runs `sluice bench --json` with `args`; asserts it succeeded and returns its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .arg("--json")
        // Nothing from the environment may redirect or limit the bench.
        .env_remove("SLUICE_ADMIN_KEY")
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_WORKSPACE_PUBLISH_RATE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("the sluice binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sluice bench failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}\n{stderr}"))
}

#[test]
fn bench_delivers_every_event_once() {
    let report = bench_json(&[
        "--events",
        "2000",
        "--timeout",
        "300",
        "--with-http-baseline",
    ]);
    let field = |name: &str| {
        report
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` missing from {report}"))
    };
    assert_eq!(field("events"), 2000, "{report}");
    assert_eq!(field("accepted"), 2000, "{report}");
    assert_eq!(field("deliveries"), 2000, "{report}");
    assert_eq!(field("expected_deliveries"), 2000, "{report}");
    assert_eq!(field("publish_errors"), 0, "{report}");
    assert!(field("first_publish_error").is_null(), "{report}");
    assert!(field("stream_error").is_null(), "{report}");
    assert_eq!(field("timed_out"), false, "{report}");
    assert_eq!(field("backend"), "sqlite", "{report}");
    let baselines = field("http_baseline_posts_per_second");
    assert_eq!(baselines.as_array().map(Vec::len), Some(2), "{report}");
    assert!(
        field("planes_cpu_per_delivery_in_posts")
            .as_f64()
            .is_some_and(|times| times > 0.0),
        "{report}"
    );
}

#[test]
fn http_baseline_posts_every_request() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--http-baseline", "--events", "500", "--json"])
        .output()
        .expect("the sluice binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sluice bench --http-baseline failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    assert_eq!(report["http_baseline"], true, "{report}");
    assert_eq!(report["posts"], 500, "{report}");
    assert!(
        report["posts_per_second"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
}

#[test]
fn http_baseline_refuses_a_database_url() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--http-baseline",
            "--database-url",
            "postgres://127.0.0.1/x",
        ])
        .output()
        .expect("the sluice binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

/// `--workload fairness` with A under a publish quota of its own (set through the control
/// plane by the bench): every event of both workspaces arrives once, and A's deliveries
/// could not outrun its quota: with a burst of 1,000 and 1,000 a second, its 4,000 events
/// take at least 3 s, so at most about 1,333 deliveries a second. That bound is what the
/// quota imposes, not a figure of this machine's speed: without the quota A goes several
/// times faster here.
#[test]
fn fairness_bench_holds_the_big_workspace_to_its_own_quota() {
    let report = bench_json(&[
        "--workload",
        "fairness",
        "--events",
        "4000",
        "--small-events",
        "50",
        "--big-publish-quota",
        "1000",
        "--timeout",
        "300",
    ]);
    assert_eq!(report["timed_out"], false, "{report}");
    assert_eq!(report["big_publish_quota"], 1000, "{report}");
    assert_eq!(report["small_alone"]["events"], 50, "{report}");
    assert_eq!(report["small_alone"]["delivered"], 50, "{report}");
    assert_eq!(
        report["small_with_big"]["delivered"], report["small_with_big"]["events"],
        "{report}"
    );
    let rate = report["big_deliveries_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate for A: {report}"));
    assert!(
        rate > 0.0 && rate <= 1_400.0,
        "A delivered {rate:.0}/s under a quota of 1,000/s with a burst of 1,000: {report}"
    );
}
