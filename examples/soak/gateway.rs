//! The hlgate process under test: started, killed with SIGKILL and started again on the same
//! data dir, its memory and open files read from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Gateway {
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub(crate) public: String,
    pub(crate) admin: String,
    child: Option<Child>,
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .to_string()
}

impl Gateway {
    pub(crate) fn new(bin: &Path, dir: &Path, exchange: &str, amqp: &str, key: &Path) -> Gateway {
        let (public, admin) = (free_port(), free_port());
        let env = [
            ("HLGATE_LISTEN", public.clone()),
            ("HLGATE_ADMIN_LISTEN", admin.clone()),
            ("HLGATE_DATA_DIR", dir.join("data").display().to_string()),
            ("HLGATE_EXCHANGE", exchange.to_string()),
            ("HLGATE_AMQP_URL", amqp.to_string()),
            (
                "HLGATE_ED25519_PUBLIC_KEYS",
                format!("@{}", key.with_extension("pub").display()),
            ),
            ("HLGATE_LOG", "warn".to_string()),
        ];
        Gateway {
            bin: bin.to_path_buf(),
            env: env.map(|(k, v)| (k.to_string(), v)).to_vec(),
            log: dir.join("hlgate.log"),
            public,
            admin,
            child: None,
        }
    }

    /// Starts hlgate and waits until its public listener answers.
    pub(crate) async fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let health = format!("http://{}/healthz", self.public);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "hlgate exited at start ({status}); see {}",
                    self.log.display()
                ));
            }
            if reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "hlgate did not answer within 60 s; see {}",
            self.log.display()
        ))
    }

    /// SIGKILL, then waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the clean stop.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Resident memory in MiB and open file descriptors.
    pub(crate) fn usage(&self) -> Option<(f64, usize)> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some((rss_kb / 1024.0, fds))
    }

    /// The outbox depth from `/readyz`, when hlgate answers.
    pub(crate) async fn outbox_depth(&self) -> Option<u64> {
        let url = format!("http://{}/readyz", self.admin);
        let body: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        body["outbox_depth"].as_u64()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
