//! Both listeners: binding (port 0 allowed), route assembly, and a stop that lets requests in
//! flight finish before it closes what is left.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::error::not_found;
use super::holding::{self, Holding};
use super::state::{AdminState, PublicState};
use super::{admin, console, events, health, oauth, proxy, public};
use crate::config::HttpSettings;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Both servers, bound, not serving until [`Servers::start`].
pub struct Servers {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
}

/// Both servers, serving on tasks of the tracker they were started on.
pub struct Serving {
    handles: [ServerHandle; 2],
    tasks: [JoinHandle<std::io::Result<()>>; 2],
}

/// `GET /healthz` on both listeners: 200 while the process serves.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr).map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, bound))
}

/// Both listening sockets, bound once: the servers that answer while the store cannot open
/// and those that follow serve the same ones, so that the ports never close in between.
pub struct Listeners {
    public: (TcpListener, SocketAddr),
    admin: (TcpListener, SocketAddr),
}

impl Listeners {
    /// Binds both listeners of `settings` (port 0 allowed).
    pub fn bind(settings: &HttpSettings) -> Result<Listeners, BindError> {
        Ok(Listeners {
            public: bind(settings.listen)?,
            admin: bind(settings.admin_listen)?,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.1
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.1
    }

    /// Another handle on the same sockets.
    fn try_clone(&self) -> Result<Listeners, BindError> {
        let clone = |(listener, addr): &(TcpListener, SocketAddr)| {
            let addr = *addr;
            let listener = listener
                .try_clone()
                .map_err(|source| BindError { addr, source })?;
            Ok((listener, addr))
        };
        Ok(Listeners {
            public: clone(&self.public)?,
            admin: clone(&self.admin)?,
        })
    }
}

/// The public listener: webhooks and the install flow.
fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(public::routes).configure(oauth::routes);
}

/// The admin listener: operations, tokens, the HighLevel API proxy and the console.
fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(admin::routes)
        .configure(console::routes)
        .configure(events::routes)
        .configure(health::routes)
        .configure(proxy::routes);
}

/// A server on `listener` whose handlers share `state`, with `/healthz` and a JSON 404.
fn server<S: Send + Sync + 'static>(
    (listener, addr): (TcpListener, SocketAddr),
    state: S,
    routes: fn(&mut web::ServiceConfig),
    workers: usize,
    grace: u64,
) -> Result<Server, BindError> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .default_service(web::to(not_found))
            .configure(routes)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(grace)
    .listen(listener)
    .map_err(|source| BindError { addr, source })?;
    Ok(server.run())
}

/// Both servers with their routes on `listeners`; nothing is served until [`Servers::start`].
pub fn serve(
    settings: &HttpSettings,
    listeners: Listeners,
    public_state: PublicState,
    admin_state: AdminState,
) -> Result<Servers, BindError> {
    let (public_addr, admin_addr) = (listeners.public_addr(), listeners.admin_addr());
    // What actix itself gives a worker to finish once stopped; `Serving::stop` bounds the rest.
    let grace = settings.shutdown_grace.as_secs().max(1);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let public = server(
        listeners.public,
        public_state,
        public_routes,
        workers,
        grace,
    )?;
    let admin = server(listeners.admin, admin_state, admin_routes, 1, grace)?;
    Ok(Servers {
        public_addr,
        admin_addr,
        public,
        admin,
    })
}

/// Servers on another handle of `listeners` that answer while the store cannot open (see
/// [`holding`](super::holding)); nothing is served until [`Servers::start`].
pub fn hold(listeners: &Listeners, state: Holding) -> Result<Servers, BindError> {
    let listeners = listeners.try_clone()?;
    let (public_addr, admin_addr) = (listeners.public_addr(), listeners.admin_addr());
    let public = server(listeners.public, state.clone(), holding::public, 1, 1)?;
    let admin = server(listeners.admin, state, holding::admin, 1, 1)?;
    Ok(Servers {
        public_addr,
        admin_addr,
        public,
        admin,
    })
}

impl Servers {
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves both listeners on `tasks` until [`Serving::stop`].
    pub fn start(self, tasks: &TaskTracker) -> Serving {
        Serving {
            handles: [self.public.handle(), self.admin.handle()],
            tasks: [tasks.spawn(self.public), tasks.spawn(self.admin)],
        }
    }
}

impl Serving {
    /// Stops accepting, public listener first; requests in flight get until `deadline` to
    /// finish, then the connections still open are closed.
    pub async fn stop(self, deadline: Duration) {
        let [public, admin] = self.handles;
        let finish = async {
            public.stop(true).await;
            admin.stop(true).await;
        };
        if tokio::time::timeout(deadline, finish).await.is_err() {
            // A stalled upload would hold the stop for ever. Dropping a server stops its workers
            // at once, with the connections they still hold.
            warn!("requests still unfinished at the deadline; closing their connections");
            for task in &self.tasks {
                task.abort();
            }
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
