//! The real `sluice` binary as child processes: a control plane and a data plane, each with
//! its own database URL, on free loopback ports. For the tests that must kill a process
//! (`kill -9` mid-burst) or read what it exports, which an in-process server cannot show.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{ADMIN_KEY, Clients, INTERNAL_TOKEN, Intercepted, MASTER_KEY, free_addr};

/// One running `sluice` subcommand.
pub struct SluiceProcess {
    child: Child,
    /// What it serves on.
    pub addr: SocketAddr,
    /// Its log file (stderr), for failure messages.
    pub log: PathBuf,
}

impl SluiceProcess {
    /// Starts `sluice <args..>` with `env`, logging to `log`, and waits until `addr` answers
    /// gRPC health (30 s at most).
    pub async fn start(
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        addr: SocketAddr,
        log: PathBuf,
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut process = SluiceProcess { child, addr, log };
        process.wait_healthy().await;
        process
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sluice exited early ({status}); log:\n{}", self.log_text());
            }
            if let Ok(channel) =
                tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect()
                    .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                if let Ok(r) = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    && r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sluice did not become healthy; log:\n{}",
                self.log_text()
            );
            // Nothing to await: the child process gives no readiness signal but the port.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's log so far.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and waits for the exit: no chance to finish anything.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit (30 s at most, then `kill -9`); returns whether it
    /// exited cleanly.
    pub async fn terminate(&mut self) -> bool {
        let pid = self.child.id().expect("the process is running").to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.is_ok_and(|s| s.success()),
            Err(_) => {
                self.kill9().await;
                false
            }
        }
    }
}

/// A control plane and a data plane as two processes.
pub struct Deployment {
    /// The binary.
    pub bin: PathBuf,
    /// The control plane process.
    pub control: SluiceProcess,
    /// The data plane process (None while stopped).
    pub data: Option<SluiceProcess>,
    data_args: Vec<String>,
    env: Vec<(String, String)>,
    data_addr: SocketAddr,
    dir: PathBuf,
}

impl Deployment {
    /// Starts both planes with these database URLs; `data_flags` are extra flags of `sluice
    /// data` (e.g. `--retry-schedule`), `env` extra environment for both.
    pub async fn start(
        bin: &Path,
        control_db: &str,
        data_db: &str,
        data_flags: &[&str],
        env: &[(&str, &str)],
    ) -> Deployment {
        let dir =
            std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
        std::fs::create_dir_all(&dir).unwrap();
        let control_addr = free_addr();
        let data_addr = free_addr();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("SLUICE_ADMIN_KEY".into(), ADMIN_KEY.into()));
        env.push(("SLUICE_INTERNAL_TOKEN".into(), INTERNAL_TOKEN.into()));
        env.push(("SLUICE_MASTER_KEY".into(), MASTER_KEY.into()));
        env.push((
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ));
        let control_args: Vec<String> = [
            "control",
            "--listen",
            &control_addr.to_string(),
            "--database-url",
            control_db,
            "--allow-http",
            "--data-plane-endpoint",
            &format!("http://{data_addr}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut data_args: Vec<String> = [
            "data",
            "--listen",
            &data_addr.to_string(),
            "--database-url",
            data_db,
            "--control-endpoint",
            &format!("http://{control_addr}"),
            "--allow-http",
            "--allow-private-destinations",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        data_args.extend(data_flags.iter().map(|s| s.to_string()));
        let control = SluiceProcess::start(
            bin,
            &control_args,
            &env,
            control_addr,
            dir.join("control.log"),
        )
        .await;
        let data =
            SluiceProcess::start(bin, &data_args, &env, data_addr, dir.join("data.log")).await;
        Deployment {
            bin: bin.to_owned(),
            control,
            data: Some(data),
            data_args,
            env,
            data_addr,
            dir,
        }
    }

    /// Control-plane clients with `key`.
    pub async fn clients(&self, key: Option<&str>) -> Clients {
        Clients::connect(self.control.addr, key).await
    }

    /// The data plane's gRPC address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        Clients::workspace_with_key(self.control.addr, name).await
    }

    /// An ingest client of the data plane publishing with `key`.
    pub async fn publisher(
        &self,
        key: &str,
    ) -> sluice_proto::data::v1::ingest_service_client::IngestServiceClient<Intercepted> {
        crate::clients::ingest_client(self.data_addr, key).await
    }

    /// Starts the data plane again (same flags, database and address).
    pub async fn restart_data(&mut self) {
        assert!(self.data.is_none(), "the data plane is still running");
        self.data = Some(
            SluiceProcess::start(
                &self.bin,
                &self.data_args,
                &self.env,
                self.data_addr,
                self.dir.join("data.log"),
            )
            .await,
        );
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- control.log\n{}\n--- data.log\n{}",
            read("control.log"),
            read("data.log")
        )
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.data.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `sluice` binary, for the integration tests of `crates/sluice`: only a package's own
/// integration tests get its path from cargo (`CARGO_BIN_EXE_sluice`).
#[macro_export]
macro_rules! sluice_bin {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
    };
}
