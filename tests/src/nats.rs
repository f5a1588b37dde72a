//! nats-server with JetStream, single nodes and a 3-node cluster.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{Reaper, ServerProcessInfo, shell_quote};
use crate::tools::{self, free_port, log_tail, nats_server_bin, temp_dir};
use crate::{HarnessError, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A nats-server process with JetStream enabled, on 127.0.0.1.
///
/// The store directory survives [`NatsServer::restart`], which reuses the same port,
/// so streams and their messages are kept across restarts.
#[derive(Debug)]
pub struct NatsServer {
    dir: PathBuf,
    port: u16,
    name: String,
    config: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
    reaper: Reaper,
}

static SHARED: OnceLock<NatsServer> = OnceLock::new();

impl NatsServer {
    /// URL of the NATS server shared by every test of this process: `TEST_NATS_URL`
    /// if set, else a server started on first use (removed by its reaper at exit).
    /// Tests that restart or stop the server must start their own instead.
    ///
    /// # Panics
    /// If the server cannot be started.
    pub fn shared_url() -> String {
        if let Ok(url) = std::env::var("TEST_NATS_URL")
            && !url.is_empty()
        {
            return url;
        }
        SHARED
            .get_or_init(|| {
                NatsServer::start().unwrap_or_else(|e| panic!("cannot start nats-server: {e}"))
            })
            .url()
    }

    /// Starts a server on a random port with a fresh store.
    pub fn start() -> Result<NatsServer> {
        Self::start_inner(None, None, "wb-nats")
    }

    /// Starts a server on a random port with `config` as its configuration file (for
    /// example `max_payload: 8MB`, or accounts and users for auth tests). The harness
    /// still sets the listen address, port and JetStream store on the command line.
    pub fn start_with_config(config: &str) -> Result<NatsServer> {
        Self::start_inner(Some(config), None, "wb-nats")
    }

    fn start_inner(config: Option<&str>, port: Option<u16>, name: &str) -> Result<NatsServer> {
        let dir = temp_dir("nats")?;
        let cleanup = format!(
            "kill -9 $(cat {pid} 2>/dev/null) 2>/dev/null; rm -rf {dir}",
            pid = shell_quote(&dir.join("nats.pid").to_string_lossy()),
            dir = shell_quote(&dir.to_string_lossy()),
        );
        let reaper = Reaper::spawn(cleanup)?;
        let config = match config {
            Some(text) => {
                let path = dir.join("nats.conf");
                std::fs::write(&path, text)
                    .map_err(|e| HarnessError::io("writing the nats-server config", e))?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            dir,
            port: port.unwrap_or(0),
            name: name.to_string(),
            config,
            child: None,
            starts: 0,
            reaper,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = nats_server_bin()?;
        let mut last_error = None;
        for _ in 0..5 {
            self.starts += 1;
            let log = self.dir.join(format!("nats-{}.log", self.starts));
            let mut command = Command::new(&bin);
            if let Some(config) = &self.config {
                command.arg("-c").arg(config);
            }
            let port_arg = if self.port == 0 {
                "-1".to_string()
            } else {
                self.port.to_string()
            };
            command
                .arg("-js")
                .arg("-sd")
                .arg(self.dir.join("store"))
                .args(["-a", "127.0.0.1", "-p", &port_arg, "-n", &self.name])
                .arg("-l")
                .arg(&log)
                .arg("-P")
                .arg(self.dir.join("nats.pid"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let mut child = command
                .spawn()
                .map_err(|e| HarnessError::io(format!("starting {}", bin.display()), e))?;
            let ready = tools::wait_for(READY_TIMEOUT, || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(None);
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("Server is ready")
                    .then(|| Some(listening_port(&text)))
            });
            match ready {
                Some(Some(Some(port))) => {
                    self.port = port;
                    self.child = Some(child);
                    return Ok(());
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let detail = log_tail(&log, 20);
                    let in_use = detail.contains("address already in use");
                    let error = HarnessError::Startup {
                        server: "nats-server".into(),
                        detail,
                        log,
                    };
                    // A fixed port taken by someone else will not free itself; a
                    // random one never collides. Retry only a fixed port's bind race.
                    if !in_use {
                        return Err(error);
                    }
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(last_error.expect("the loop ran at least once"))
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (stable across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s), keeping its
    /// store. [`NatsServer::start_again`] brings it back on the same port.
    pub fn stop(&mut self) {
        self.terminate(Signal::SIGTERM);
    }

    /// Kills the server with SIGKILL, keeping its store (a crash).
    pub fn kill(&mut self) {
        self.terminate(Signal::SIGKILL);
    }

    fn terminate(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
            let _ = kill(pid, signal);
            let exited = tools::wait_for(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_))).then_some(())
            });
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(self.dir.join("nats.pid"));
        }
    }

    /// Starts a stopped or killed server again on the same port with the same store.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// Restarts the server (graceful stop, then start on the same port and store).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Where the server process and its directory are.
    pub fn process_info(&self) -> Option<ServerProcessInfo> {
        Some(ServerProcessInfo {
            kind: "nats".into(),
            pid: self.child.as_ref()?.id(),
            dir: self.dir.clone(),
        })
    }

    /// Path of the current log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("nats-{}.log", self.starts))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        self.reaper.cleanup_now();
    }
}

/// Reads the client port from a nats-server log.
fn listening_port(log: &str) -> Option<u16> {
    let marker = "Listening for client connections on ";
    let line = log.lines().rev().find(|line| line.contains(marker))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

/// A 3-node JetStream cluster on loopback, for replication and fault tests.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster of `size` nodes (3 for R3 streams).
    ///
    /// Its route and client ports are probed free first (every node must know the routes
    /// before it starts), so another process may take one before a node binds it: the whole
    /// cluster is then started again on fresh ports.
    pub fn start(size: usize) -> Result<NatsCluster> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let routes = (0..size).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
            let clients = (0..size).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
            match Self::start_on(&routes, &clients) {
                Err(e) if attempt < 3 && e.to_string().contains("address already in use") => {}
                other => return other,
            }
        }
    }

    /// Starts one node per (route port, client port).
    fn start_on(cluster_ports: &[u16], client_ports: &[u16]) -> Result<NatsCluster> {
        let routes = cluster_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(cluster_ports.len());
        for (i, (cluster_port, client_port)) in cluster_ports.iter().zip(client_ports).enumerate() {
            let config = format!(
                "server_name: wb-node-{i}\n\
                 cluster {{\n  name: walbrook-test\n  listen: \"127.0.0.1:{cluster_port}\"\n  \
                 routes: [{routes}]\n}}\n"
            );
            nodes.push(NatsServer::start_inner(
                Some(&config),
                Some(*client_port),
                &format!("wb-node-{i}"),
            )?);
        }
        // A taken route port is reported after "Server is ready" (routes listen in the
        // background, a few milliseconds later), so the nodes' logs are watched for a second.
        let logs: Vec<PathBuf> = nodes
            .iter()
            .map(|n| n.dir.join(format!("nats-{}.log", n.starts)))
            .collect();
        let in_use = tools::wait_for(Duration::from_secs(1), || {
            logs.iter().find(|log| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .contains("address already in use")
            })
        });
        if let Some(log) = in_use {
            return Err(HarnessError::Startup {
                server: "nats-server (cluster node)".into(),
                detail: log_tail(log, 20),
                log: log.clone(),
            });
        }
        Ok(NatsCluster { nodes })
    }

    /// The client URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Node `i`.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_from_the_log() {
        let log = "[1] [INF] Listening for client connections on 127.0.0.1:40123\n\
                   [1] [INF] Server is ready";
        assert_eq!(listening_port(log), Some(40123));
    }

    /// A node whose probed port was taken fails with the text `NatsCluster::start` retries
    /// on (with fresh ports), whether the client port was taken (before "Server is ready")
    /// or the route port (reported after it).
    #[test]
    fn a_cluster_node_on_a_taken_port_fails_with_address_already_in_use() {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let free = || free_port().unwrap();
        for (routes, clients) in [([free()], [port]), ([port], [free()])] {
            let error = NatsCluster::start_on(&routes, &clients)
                .expect_err("the port is taken")
                .to_string();
            assert!(error.contains("address already in use"), "{error}");
        }
    }
}
