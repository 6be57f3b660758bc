//! A local stand-in for an incoming webhook (Slack, Mattermost, Teams): it records every POST,
//! and answers the first ones it is told to fail with 500.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(Default)]
pub struct Received {
    /// Every body POSTed, as received, in order (failed ones too).
    pub bodies: Vec<String>,
    /// How many of the next requests get 500.
    pub fail_next: usize,
}

#[derive(Clone)]
pub struct Receiver {
    /// Its URL, with a path standing for the secret an incoming-webhook URL carries.
    pub url: String,
    pub state: Arc<Mutex<Received>>,
}

async fn hook(body: String, state: web::Data<Arc<Mutex<Received>>>) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.bodies.push(body);
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return HttpResponse::InternalServerError().body("down for now");
    }
    HttpResponse::Ok().body("ok")
}

impl Receiver {
    pub const SECRET_PATH: &'static str = "/services/T0/B0/receiver-s3cret";

    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            Self::SECRET_PATH
        );
        let state = Arc::new(Mutex::new(Received::default()));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(Self::SECRET_PATH, web::post().to(hook))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Receiver { url, state }
    }

    pub fn fail_next(&self, n: usize) {
        self.state.lock().unwrap().fail_next = n;
    }

    pub fn bodies(&self) -> Vec<String> {
        self.state.lock().unwrap().bodies.clone()
    }

    /// The alerts received (each a JSON object), once at least `n` came; panics after 30 s.
    pub async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let bodies = self.bodies();
            if bodies.len() >= n {
                return bodies
                    .iter()
                    .map(|b| serde_json::from_str(b).expect("an alert is JSON"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} alerts, got {bodies:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits a few of hlgate's one-second looks and returns what came meanwhile: nothing new
    /// should come when nothing changed.
    pub async fn settled(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.bodies()
    }
}

/// `(alert, state)` of each alert, in order.
pub fn transitions(alerts: &[serde_json::Value]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["alert"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
