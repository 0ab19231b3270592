//! The planes under test: `sluice dev` (or a cluster of `sluice control` and several
//! `sluice data`) started as child processes (so their CPU time and memory can be read
//! apart from the bench's own publisher and receiver), or planes already running elsewhere. Also reading a process's CPU time and peak RSS, the machine's steal
//! and a local PostgreSQL server's CPU time, from `/proc`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long the child gets to stop after SIGTERM before it is killed. The data plane's
/// default shutdown grace is 10 s.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The planes the bench started: `sluice dev` (both planes in one process), or with
/// `--data-replicas N` a cluster of one `sluice control` and N `sluice data` processes.
pub(crate) struct ChildPlanes {
    processes: Vec<ChildProcess>,
    pub(crate) control: SocketAddr,
    /// Every data plane's address (one for `sluice dev`).
    pub(crate) data: Vec<SocketAddr>,
    pub(crate) admin_key: String,
    pub(crate) data_dir: PathBuf,
    keep_data_dir: bool,
}

/// One child process and its log.
struct ChildProcess {
    /// What it is, for messages (`sluice dev`, `sluice data #2`).
    name: String,
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
}

impl ChildProcess {
    fn spawn(
        name: String,
        mut command: Command,
        log_path: PathBuf,
        database_url: Option<&str>,
    ) -> anyhow::Result<ChildProcess> {
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // The bench decides the backend: PostgreSQL only when asked, never from a variable
        // left in the environment.
        match database_url {
            Some(url) => command.env("SLUICE_DATABASE_URL", url),
            None => command.env_remove("SLUICE_DATABASE_URL"),
        };
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(ChildProcess {
            name,
            pid: child.id(),
            child: Some(child),
            log_path,
        })
    }

    /// The last lines of its log, to show when something went wrong.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            let tail = self.log_tail(30);
            // Every run starts Sluice with a master key of its own, which cannot open the
            // secrets an earlier run sealed in the same database.
            let hint = if tail.contains("does not open the stored secrets") {
                "\nhint: --database-url must name an empty database (each bench run seals its \
                 secrets with a new master key); create a fresh one, e.g. \
                 `psql -c 'CREATE DATABASE bench2'`"
            } else {
                ""
            };
            bail!(
                "{} exited early ({status}); its log ({}):\n{tail}{hint}",
                self.name,
                self.log_path.display(),
            );
        }
        Ok(())
    }
}

/// Two distinct free loopback ports: bound on port 0 together, then released.
fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let a = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// A free loopback port: bound on port 0, then released.
fn free_port() -> anyhow::Result<SocketAddr> {
    let a = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(a.local_addr()?)
}

/// A fresh directory under the system's temp dir.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the bench directory {}", dir.display()))?;
    Ok(dir)
}

/// Whether `sluice dev` of this binary has a `--database-url` flag.
pub(crate) fn dev_supports_database_url(exe: &Path) -> bool {
    Command::new(exe)
        .args(["dev", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--database-url"))
        .unwrap_or(false)
}

impl ChildPlanes {
    /// Starts `<this binary> dev` on fresh ports, a fresh data directory and a random admin
    /// key; its log goes to `sluice-dev.log` in that directory.
    pub(crate) fn spawn(
        database_url: Option<&str>,
        keep_data_dir: bool,
    ) -> anyhow::Result<ChildPlanes> {
        let exe = std::env::current_exe().context("cannot find the sluice binary")?;
        let (control, data) = free_ports()?;
        let data_dir = fresh_dir()?;
        let admin_key = sluice_core::apikey::generate_api_key();
        let mut command = Command::new(&exe);
        command
            .arg("dev")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--control-listen")
            .arg(control.to_string())
            .arg("--data-listen")
            .arg(data.to_string())
            .arg("--admin-key")
            .arg(&admin_key);
        let dev = ChildProcess::spawn(
            "sluice dev".to_owned(),
            command,
            data_dir.join("sluice-dev.log"),
            database_url,
        )?;
        Ok(ChildPlanes {
            processes: vec![dev],
            control,
            data: vec![data],
            admin_key,
            data_dir,
            keep_data_dir,
        })
    }

    /// Starts one `sluice control` and `replicas` `sluice data` processes of this binary on
    /// `database_url`, on fresh ports, with a random admin key, internal token and master
    /// key; their logs go to `control.log` and `data-<n>.log` in a fresh directory.
    pub(crate) fn spawn_cluster(
        database_url: &str,
        replicas: u32,
        keep_data_dir: bool,
    ) -> anyhow::Result<ChildPlanes> {
        let exe = std::env::current_exe().context("cannot find the sluice binary")?;
        let control = free_port()?;
        let data: Vec<SocketAddr> = (0..replicas)
            .map(|_| free_port())
            .collect::<anyhow::Result<_>>()?;
        let data_dir = fresh_dir()?;
        let admin_key = sluice_core::apikey::generate_api_key();
        let internal_token = sluice_core::apikey::generate_api_key();
        let master_key = sluice_core::sealing::generate_master_key();
        let command = |args: &[String]| {
            let mut command = Command::new(&exe);
            command
                .args(args)
                .env("SLUICE_ADMIN_KEY", &admin_key)
                .env("SLUICE_INTERNAL_TOKEN", &internal_token)
                .env("SLUICE_MASTER_KEY", &master_key)
                .env_remove("SLUICE_MASTER_KEY_FILE");
            command
        };
        let mut processes = vec![ChildProcess::spawn(
            "sluice control".to_owned(),
            command(&[
                "control".to_owned(),
                "--listen".to_owned(),
                control.to_string(),
                "--allow-http".to_owned(),
                "--data-plane-endpoint".to_owned(),
                format!("http://{}", data[0]),
            ]),
            data_dir.join("control.log"),
            Some(database_url),
        )?];
        for (i, addr) in data.iter().enumerate() {
            processes.push(ChildProcess::spawn(
                format!("sluice data #{}", i + 1),
                command(&[
                    "data".to_owned(),
                    "--listen".to_owned(),
                    addr.to_string(),
                    "--control-endpoint".to_owned(),
                    format!("http://{control}"),
                    "--allow-http".to_owned(),
                    "--allow-private-destinations".to_owned(),
                ]),
                data_dir.join(format!("data-{}.log", i + 1)),
                Some(database_url),
            )?);
        }
        Ok(ChildPlanes {
            processes,
            control,
            data,
            admin_key,
            data_dir,
            keep_data_dir,
        })
    }

    /// The process ids of every plane process.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Fails with a process's log when one has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            process.check_alive()?;
        }
        Ok(())
    }

    /// Waits until every plane answers gRPC health with SERVING.
    pub(crate) async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let planes: Vec<(&str, SocketAddr)> = std::iter::once(("control plane", self.control))
            .chain(self.data.iter().map(|a| ("data plane", *a)))
            .collect();
        for (what, addr) in planes {
            loop {
                self.check_alive()?;
                if health_serving(&format!("http://{addr}")).await {
                    break;
                }
                if Instant::now() >= deadline {
                    let logs: Vec<String> = self
                        .processes
                        .iter()
                        .map(|p| {
                            format!("{} ({}):\n{}", p.name, p.log_path.display(), p.log_tail(30))
                        })
                        .collect();
                    bail!(
                        "the {what} on {addr} did not answer gRPC health within {}s; logs:\n{}",
                        timeout.as_secs(),
                        logs.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every process, then waits (SIGKILL after a grace period). Returns whether
    /// they all stopped gracefully.
    pub(crate) async fn stop(&mut self) -> bool {
        for process in &self.processes {
            if process.child.is_some() {
                let pid = nix::unistd::Pid::from_raw(process.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut all_clean = true;
        for process in &mut self.processes {
            let Some(mut child) = process.child.take() else {
                continue;
            };
            let clean = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status.success(),
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break false;
                    }
                }
            };
            all_clean &= clean;
        }
        all_clean
    }

    /// Removes the data directory unless it is to be kept.
    pub(crate) fn cleanup(&self, keep: bool) {
        if !(keep || self.keep_data_dir) {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl Drop for ChildPlanes {
    fn drop(&mut self) {
        // Never leave a child behind, whatever path the bench left by.
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether the server at `url` answers the gRPC health check (service "") with SERVING.
pub(crate) async fn health_serving(url: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    matches!(
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await,
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// A channel to `url`, tuned for the bench (no Nagle delay).
pub(crate) async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad address {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// CPU time and peak resident memory of one process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ProcSample {
    /// User plus system CPU seconds of every thread so far.
    pub(crate) cpu_seconds: f64,
    /// Peak resident set (`VmHWM`), in bytes.
    pub(crate) peak_rss_bytes: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat`: `sysconf(_SC_CLK_TCK)`, which is 100 on
/// every Linux this runs on; 100 if it cannot be read.
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100.0, |t| t as f64)
}

/// Reads `pid`'s CPU time (utime + stime of `/proc/<pid>/stat`, all threads) and peak RSS
/// (`VmHWM` of `/proc/<pid>/status`). `None` where `/proc` cannot be read (not Linux, or
/// the process is gone).
pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_seconds: parse_stat_ticks(&stat)? as f64 / clock_ticks(),
        peak_rss_bytes: parse_vm_hwm(&status)?,
    })
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after its `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, ticks) = stat_ticks(stat)?;
    Some(ticks.utime + ticks.stime)
}

/// A process's CPU clock ticks from `/proc/<pid>/stat`: its own and, in `cutime` and
/// `cstime`, those of its children that have exited and been waited for.
struct StatTicks {
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// The command name of a `/proc/<pid>/stat` text and its tick fields (14-17). The name
/// (field 2) is in parentheses and may hold spaces or parentheses, so fields are counted
/// after its last `)`.
fn stat_ticks(stat: &str) -> Option<(&str, StatTicks)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name the state is field 3, so fields 14-17 are at 11-14.
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((
        name,
        StatTicks {
            utime: field(11)?,
            stime: field(12)?,
            cutime: field(13)?,
            cstime: field(14)?,
        },
    ))
}

/// `VmHWM` in bytes from the text of `/proc/<pid>/status`.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds of every process on this machine named `postgres` (the server and its
/// backends), including what exited backends left in their parent's account (cutime and
/// cstime), so two readings bracket the server's work between them. `None` where `/proc`
/// cannot be read or no such process runs here.
pub(crate) fn postgres_cpu_seconds() -> Option<f64> {
    let mut ticks = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        // Processes come and go between listing and reading: skip what cannot be read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(t) = parse_postgres_ticks(&stat) {
            ticks += t;
            found = true;
        }
    }
    found.then(|| ticks as f64 / clock_ticks())
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` text whose command is
/// `postgres`; `None` for any other process.
fn parse_postgres_ticks(stat: &str) -> Option<u64> {
    let (name, t) = stat_ticks(stat)?;
    (name == "postgres").then_some(t.utime + t.stime + t.cutime + t.cstime)
}

/// The machine's CPU time counters from the first line of `/proc/stat`, in clock ticks: all
/// of them, and steal (time the hypervisor ran other guests while this VM had work).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MachineTicks {
    total: u64,
    steal: u64,
}

/// Reads the machine's CPU time counters; `None` where `/proc/stat` cannot be read.
pub(crate) fn machine_ticks() -> Option<MachineTicks> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: the first eight
/// add up to the total (guest time is already counted in user).
fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let mut fields = stat.lines().next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let steal = *values.get(7)?;
    Some(MachineTicks {
        total: values.iter().sum(),
        steal,
    })
}

/// Steal between two readings, as a percentage of the machine's CPU time. On a VM whose
/// host is busy this is what the other guests took; the same run is then slower and its
/// CPU figures higher, so it says whether two runs are comparable.
pub(crate) fn steal_percent(before: MachineTicks, after: MachineTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let steal = after.steal.checked_sub(before.steal)?;
    (total > 0).then(|| steal as f64 * 100.0 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_add_up_the_first_eight_fields_of_the_cpu_line() {
        let stat = "cpu  100 5 40 800 10 1 4 40 7 0\ncpu0 50 2 20 400 5 0 2 20 3 0\nintr 1\n";
        assert_eq!(
            parse_machine_ticks(stat),
            Some(MachineTicks {
                total: 1000,
                steal: 40
            })
        );
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_machine_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn steal_is_a_share_of_the_ticks_between_two_readings() {
        let before = MachineTicks {
            total: 1000,
            steal: 40,
        };
        let after = MachineTicks {
            total: 1400,
            steal: 100,
        };
        assert_eq!(steal_percent(before, after), Some(15.0));
        assert_eq!(steal_percent(before, before), None, "no time passed");
        assert_eq!(steal_percent(after, before), None, "counters never go back");
    }

    #[test]
    fn postgres_ticks_count_its_own_and_its_exited_childrens_time() {
        let server = "2249 (postgres) S 1 2249 2249 0 -1 4194560 9 0 0 0 \
                      120 30 400 50 20 0 1 0 1000 100000 100";
        assert_eq!(parse_postgres_ticks(server), Some(600));
        let other = "17 (postgres-exporter) S 1 17 17 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0";
        assert_eq!(parse_postgres_ticks(other), None);
        assert_eq!(parse_postgres_ticks("18 (postgres) S 1"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (sluice dev (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 350 75 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(425));
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\tsluice\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(51200 * 1024));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("/proc is readable on Linux");
        assert!(s.peak_rss_bytes > 0);
    }
}
