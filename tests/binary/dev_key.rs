//! `sluice dev` and its master key: the first start creates `<data-dir>/master.key` (mode
//! 0600) and says so, the next start keeps it (the stored secrets still open), and a start
//! with another key refuses, naming the key id, instead of signing with anything.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_testkit::process::SluiceProcess;
use sluice_testkit::{ADMIN_KEY, Clients, free_addr};

/// Starts `sluice dev` on `data_dir` with `env`, logging to `log`; returns once it serves.
async fn start_dev(data_dir: &Path, log: &Path) -> SluiceProcess {
    let control = free_addr();
    SluiceProcess::start(
        &sluice_testkit::sluice_bin!(),
        &dev_args(data_dir, control),
        &[
            ("SLUICE_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        control,
        log.to_owned(),
    )
    .await
}

fn dev_args(data_dir: &Path, control: std::net::SocketAddr) -> Vec<String> {
    vec![
        "dev".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--control-listen".into(),
        control.to_string(),
        "--data-listen".into(),
        free_addr().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_creates_keeps_and_checks_its_master_key() {
    let root =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    let data_dir = root.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let key_file = data_dir.join("master.key");

    // First start: the key is made, kept private, and announced.
    let mut dev = start_dev(&data_dir, &root.join("first.log")).await;
    let log = std::fs::read_to_string(&dev.log).unwrap();
    assert!(log.contains("created a development master key"), "{log}");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    assert!(!log.contains(key.trim()), "the key itself is never logged");
    let (_, api_key) = Clients::workspace_with_key(dev.addr, "Tideflow").await;
    let mut clients = Clients::connect(dev.addr, Some(&api_key)).await;
    let created = clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: "http://127.0.0.1:9/hook".into(),
                filters: vec!["*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dev.terminate().await, "sluice dev did not stop cleanly");

    // Second start: the same key, and the stored secret opens.
    let mut dev = start_dev(&data_dir, &root.join("second.log")).await;
    let log = std::fs::read_to_string(&dev.log).unwrap();
    assert!(log.contains("using the development master key"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "the key is kept"
    );
    let mut clients = Clients::connect(dev.addr, Some(&api_key)).await;
    let revealed = clients
        .subscriptions
        .reveal_subscription_secret(pb::RevealSubscriptionSecretRequest {
            id: created.subscription.unwrap().id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.secret, created.secret);
    assert!(dev.terminate().await, "sluice dev did not stop cleanly");

    // Another key: the start fails with the reason, and serves nothing.
    let other = sluice_core::sealing::generate_master_key();
    let run = tokio::process::Command::new(sluice_testkit::sluice_bin!())
        .args(dev_args(&data_dir, free_addr()))
        .env("SLUICE_ADMIN_KEY", ADMIN_KEY)
        .env("SLUICE_MASTER_KEY", &other)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("sluice dev with the wrong key kept running")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    let other_id = sluice_core::sealing::Keyring::parse(&other).unwrap();
    assert!(
        stderr.contains("the master key does not open the stored secrets")
            && stderr.contains(&format!(
                "is not among the configured keys ({})",
                other_id.current_id()
            )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&other) && !stderr.contains(key.trim()),
        "no key in the message"
    );
    let _ = std::fs::remove_dir_all(&root);
}
