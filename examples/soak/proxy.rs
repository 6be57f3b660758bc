//! A TCP proxy in front of RabbitMQ whose connections can be cut: what a network fault or a
//! broker restart looks like from hlgate's side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct CutProxy {
    pub(crate) port: u16,
    /// Bumped on every cut: each connection's pump ends when it changes.
    cuts: watch::Sender<u64>,
    /// New connections are dropped at once while set.
    down: Arc<AtomicBool>,
}

impl CutProxy {
    pub(crate) async fn start(upstream: &'static str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let port = listener.local_addr().expect("bound").port();
        let (cuts, _) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let (tx, flag) = (cuts.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if flag.load(Ordering::Relaxed) {
                    continue;
                }
                let mut cut = tx.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        CutProxy { port, cuts, down }
    }

    /// Drops every connection and refuses new ones for `outage`.
    pub(crate) async fn cut(&self, outage: Duration) {
        self.down.store(true, Ordering::Relaxed);
        self.cuts.send_modify(|n| *n += 1);
        tokio::time::sleep(outage).await;
        self.down.store(false, Ordering::Relaxed);
    }
}
