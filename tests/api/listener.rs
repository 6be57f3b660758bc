//! What the `hlgate listen` tests run: the real binary with its output read line by line, and a
//! local receiver standing in for the developer's code, answering as it is told.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::helpers::*;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: Vec<u8>,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses to answer first, in order; then `otherwise`.
    script: VecDeque<u16>,
    otherwise: u16,
    received: Vec<Received>,
}

/// A local HTTP server taking `POST /hook`.
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

async fn hook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<ReceiverState>>,
) -> HttpResponse {
    let mut state = state.lock().unwrap();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    state.received.push(Received {
        body: body.to_vec(),
        headers,
    });
    let status = state.script.pop_front().unwrap_or(state.otherwise);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

impl Receiver {
    /// Answers the statuses of `script` first, then 200 to everything.
    pub fn start(script: &[u16]) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            otherwise: 200,
            received: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hook", web::post().to(hook))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Receiver { url, state }
    }

    /// Every request so far, once there are at least `n` (panics after 30 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.state.lock().unwrap().received.clone();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests, got {}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From now on (the script done), answers `status`.
    pub fn answer(&self, status: u16) {
        self.state.lock().unwrap().otherwise = status;
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }
}

/// The environment `hlgate listen` finds: the broker and the app's exchange, nothing else.
pub fn listen_env(app: &TestApp) -> Vec<(String, String)> {
    vec![
        ("HLGATE_AMQP_URL".into(), AMQP_URL.into()),
        ("HLGATE_EXCHANGE".into(), app.exchange.clone()),
    ]
}

/// A running `hlgate listen`, its standard output and error collected line by line.
pub struct Listening {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn read_lines(
    out: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    })
}

impl Listening {
    pub fn spawn(args: &[&str], env: &[(String, String)]) -> Listening {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hlgate"))
            .arg("listen")
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hlgate binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            read_lines(child.stdout.take().unwrap(), lines.clone()),
            read_lines(child.stderr.take().unwrap(), lines.clone()),
        ];
        Listening {
            child,
            lines,
            readers,
        }
    }

    /// Starts a listener and waits until it consumes.
    pub async fn ready(args: &[&str], env: &[(String, String)]) -> Listening {
        let listening = Listening::spawn(args, env);
        listening.wait_line("forwarding to").await;
        listening
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first line containing `text` (panics after 30 s).
    pub async fn wait_line(&self, text: &str) -> String {
        self.wait_lines(text, 1).await.remove(0)
    }

    /// The lines containing `text`, once there are `n` (panics after 30 s).
    pub async fn wait_lines(&self, text: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| l.contains(text))
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "not {n} lines with {text:?} in {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ctrl-C; answers the exit code.
    pub async fn interrupt(mut self) -> (Option<i32>, Vec<String>) {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "did not stop on SIGINT");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The readers have the rest of the output once the pipes close.
        let readers = std::mem::take(&mut self.readers);
        tokio::task::spawn_blocking(move || readers.into_iter().for_each(|r| r.join().unwrap()))
            .await
            .unwrap();
        (code, self.lines())
    }
}

impl Drop for Listening {
    /// A failed test leaves no listener consuming the shared broker.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hlgate listen ARGS` run to its end: exit code, standard output, standard error.
pub async fn listen_once(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let (args, env): (Vec<String>, Vec<(String, String)>) =
        (args.iter().map(|a| a.to_string()).collect(), env.to_vec());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hlgate"))
            .arg("listen")
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many messages the durable queue holds; `None` when there is no such queue.
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let (connection, channel) = amqp().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "bye".into()).await;
    depth
}
