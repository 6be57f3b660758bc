//! A link to RabbitMQ that stalls (open, but nothing comes back) is noticed: readiness says the
//! broker is disconnected, the relay reconnects, and nothing is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// A TCP proxy in front of the real RabbitMQ that can stop passing bytes without closing.
struct StallingProxy {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                while stalled.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl StallingProxy {
    async fn start() -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (broker_read, broker_write) = broker.into_split();
                tokio::spawn(pipe(client_read, broker_write, flag.clone()));
                tokio::spawn(pipe(broker_read, client_write, flag.clone()));
            }
        });
        StallingProxy { addr, stalled }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

async fn wait_broker(app: &TestApp, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.readyz().await["broker"] != state {
        assert!(Instant::now() < deadline, "/readyz never said {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stalled_link_is_reported_and_replaced() {
    let proxy = StallingProxy::start().await;
    let app = spawn_app_with(&[("HLGATE_AMQP_URL", &proxy.url())]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (first, body) = contact_event("L");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(message_id(&tap.take(1).await[0]), first);
    wait_broker(&app, "connected").await;

    proxy.stalled.store(true, Ordering::Relaxed);
    let (second, body) = contact_event("L");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    // Its confirm never comes: readiness stops saying connected.
    wait_broker(&app, "disconnected").await;

    proxy.stalled.store(false, Ordering::Relaxed);
    let got = tap.take(1).await;
    assert_eq!(message_id(&got[0]), second);
    wait_broker(&app, "connected").await;
    app.wait_drained().await;
    tap.cleanup(&app.exchange).await;
}
