//! Wires everything: opens the store, starts the relay and the sweeper, binds both listeners
//! (port 0 allowed), and drains in order on shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::highlevel::HighLevelClient;
use crate::http::{admin, error, public};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::oauth::{
    refresher, vault, Hooks, InstallSettings, TokenService, TokenServiceParts, Vault, VaultError,
};
use crate::publish::{relay, Relay, RelayConfig};
use crate::schema::Schemas;
use crate::store::{Store, StoreError};

/// How often the token schedule looks for tenants due for a refresh.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long one store commit may take before hlgate gives up on the process.
const STUCK_EXIT: Duration = Duration::from_secs(60);
use crate::verify::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot load the event schemas: {0}")]
    Schemas(#[from] crate::schema::SchemaError),
    #[error("token vault: {0}")]
    Vault(#[from] VaultError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartupError {
    /// The data dir is damaged so that starting would hide it.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StartupError::Store {
                source: StoreError::Damaged(_),
                ..
            }
        )
    }
}

/// A built hlgate, listening, ready to run.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
    store: Store,
    relay: Relay,
    tokens: Arc<TokenService>,
    settings: Settings,
    shutdown: CancellationToken,
}

/// The vault (always: private tokens need no app credentials) and, with credentials, the client.
fn token_service(
    settings: &Settings,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> Result<TokenService, StartupError> {
    let store_err = |source| StartupError::Store {
        dir: settings.data_dir.display().to_string(),
        source,
    };
    let key = vault::load_or_create_key(settings.token_key.as_ref(), &settings.data_dir)?;
    let client = settings.oauth.as_ref().map(|o| {
        HighLevelClient::new(
            &settings.oauth_base_url,
            &o.client_id,
            o.client_secret.clone(),
            o.redirect_uri.clone(),
        )
    });
    Ok(TokenService::new(TokenServiceParts {
        vault: Vault::new(store.keyed_tree("tokens").map_err(store_err)?, &key),
        installs: store.keyed_tree("installs").map_err(store_err)?,
        client,
        install: InstallSettings {
            marketplace_url: settings.marketplace_url.clone(),
            redirect_uri: settings.oauth.as_ref().and_then(|o| o.redirect_uri.clone()),
            scopes: settings.oauth.as_ref().and_then(|o| o.scopes.clone()),
        },
        refresh_before: settings.token_refresh_before,
        min_ttl: settings.token_min_ttl,
        attach_tokens: settings.attach_tokens,
        metrics: metrics.clone(),
    }))
}

/// Damage about events already accepted does not stop the gateway: refusing to start would
/// lose the webhooks still coming as well. It is reported until an operator accepts it.
fn report_damage(store: &Store) {
    let damage = store.damage();
    if !damage.is_empty() {
        error!(
            %damage,
            "the store is damaged: events are missing; /readyz answers 503 until `hlgate store \
             accept-loss` (see `hlgate store check`)"
        );
    }
}

fn listener(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind { addr, source })
}

impl Application {
    /// Opens the store and binds the listeners; nothing runs until [`Application::run`].
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| StartupError::Store {
            dir: settings.data_dir.display().to_string(),
            source: StoreError::io("cannot create the data dir", e),
        })?;
        let store =
            Store::open(&settings.data_dir, settings.dedup_retention).map_err(|source| {
                StartupError::Store {
                    dir: settings.data_dir.display().to_string(),
                    source,
                }
            })?;
        store.limit_outbox(settings.outbox_max_events);
        report_damage(&store);
        let metrics = Arc::new(Metrics::default());
        let tokens = Arc::new(token_service(&settings, &store, &metrics)?);
        let schemas = Arc::new(Schemas::embedded(settings.schema_mode)?);
        info!(
            schema_mode = settings.schema_mode.as_str(),
            schemas = schemas.len(),
            "event schemas compiled"
        );
        let ingest = Arc::new(Ingest {
            verifier: Verifier {
                ed25519: settings.ed25519_keys.clone(),
                rsa: settings.rsa_keys.clone(),
                accept_legacy_rsa: settings.accept_legacy_rsa,
            },
            store: store.clone(),
            schemas,
            metrics: metrics.clone(),
            retention: settings.dedup_retention,
            max_future_skew: settings.max_future_skew,
        });

        let public_listener = listener(settings.listen)?;
        let admin_listener = listener(settings.admin_listen)?;
        let public_addr = public_listener.local_addr().expect("bound");
        let admin_addr = admin_listener.local_addr().expect("bound");
        let grace = settings.shutdown_grace.as_secs().max(1);

        let public_state = web::Data::new(public::PublicState {
            ingest,
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.body_timeout,
            bodies: public::BodyBudget::for_max_body(settings.max_body_bytes),
            tokens: Some(tokens.clone()),
        });
        let public = HttpServer::new(move || {
            App::new()
                .app_data(public_state.clone())
                .configure(public::routes)
                .default_service(web::to(error::not_found))
        })
        .workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .disable_signals()
        .shutdown_timeout(grace)
        .listen(public_listener)
        .map_err(|source| StartupError::Bind {
            addr: public_addr,
            source,
        })?
        .run();

        let admin_state = web::Data::new(admin::AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            admin_token: settings.admin_token.clone(),
            outbox_max_events: settings.outbox_max_events,
            tenant_states: Some({
                let tokens = tokens.clone();
                Arc::new(move || tokens.state_counts())
            }),
            tokens: tokens.clone(),
        });
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .configure(admin::routes)
                .default_service(web::to(error::not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(grace)
        .listen(admin_listener)
        .map_err(|source| StartupError::Bind {
            addr: admin_addr,
            source,
        })?
        .run();

        let relay = Relay {
            config: RelayConfig {
                amqp_url: settings.amqp_url.expose().to_string(),
                exchange: settings.exchange.clone(),
                declare_topology: settings.declare_topology,
                schema_mode: settings.schema_mode,
            },
            store: store.clone(),
            metrics: metrics.clone(),
            hooks: Some(Arc::new(Hooks(tokens.clone()))),
        };

        Ok(Application {
            public_addr,
            admin_addr,
            public,
            admin,
            store,
            relay,
            tokens,
            settings,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Cancel it to shut down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains in order: stop accepting and
    /// finish in-flight requests, let the relay finish its batch, flush the store, all within
    /// the grace period. Returns true when everything stopped in time.
    pub async fn run(self) -> bool {
        let Application {
            public,
            admin,
            store,
            relay,
            tokens,
            settings,
            shutdown,
            ..
        } = self;
        let public_handle = public.handle();
        let admin_handle = admin.handle();
        let public_task = tokio::spawn(public);
        let admin_task = tokio::spawn(admin);
        let relay_task = tokio::spawn(relay.run(shutdown.child_token()));
        if tokens.client().is_some() {
            tokens.spawn(refresher::run(
                tokens.clone(),
                REFRESH_EVERY,
                shutdown.child_token(),
            ));
        }
        let sweeper = tokio::spawn(sweep(
            store.clone(),
            settings.clone(),
            shutdown.child_token(),
        ));
        info!(
            public = %self.public_addr,
            admin = %self.admin_addr,
            "hlgate serving"
        );

        shutdown.cancelled().await;
        info!(grace = ?settings.shutdown_grace, "shutting down");
        let drained = tokio::time::timeout(
            settings.shutdown_grace,
            drain(
                public_handle,
                admin_handle,
                [public_task, admin_task],
                relay_task,
                &tokens,
                &store,
                settings.shutdown_grace,
            ),
        )
        .await;
        sweeper.abort();
        match drained {
            Ok(()) => {
                info!("stopped");
                true
            }
            Err(_) => {
                warn!("shutdown grace elapsed; stopping anyway");
                let _ = store.flush().await;
                false
            }
        }
    }
}

/// The part of the grace requests in flight get to finish; the rest is for the relay's batch
/// and the final flush.
fn requests_deadline(grace: Duration) -> Duration {
    grace * 3 / 4
}

async fn drain(
    public: ServerHandle,
    admin: ServerHandle,
    servers: [JoinHandle<std::io::Result<()>>; 2],
    relay: JoinHandle<()>,
    tokens: &TokenService,
    store: &Store,
    grace: Duration,
) {
    // Stop taking webhooks first, finishing the requests in flight; their events are stored.
    let finish = async {
        public.stop(true).await;
        admin.stop(true).await;
    };
    if tokio::time::timeout(requests_deadline(grace), finish)
        .await
        .is_err()
    {
        // A stalled upload would hold the stop for ever. Dropping a server stops its workers at
        // once, with the connections they still hold.
        warn!("requests still unfinished at the deadline; closing their connections");
        for server in &servers {
            server.abort();
        }
    }
    for server in servers {
        let _ = server.await;
    }
    // The relay sees the cancelled token and returns after its current batch.
    let _ = relay.await;
    // The refresher stops between tenants; a refresh already asked of HighLevel (the
    // refresher's, or one the relay or a request started) stores its pair first.
    tokens.tasks().close();
    tokens.tasks().wait().await;
    if let Err(e) = store.flush().await {
        warn!(error = %e, "final flush failed");
    }
}

/// Removes expired events and dedup keys a bucket at a time, closes the buckets that are
/// idle (see `Store::close_idle`), and watches the data disk.
async fn sweep(store: Store, settings: Settings, shutdown: CancellationToken) {
    let every =
        (settings.dedup_retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut next_sweep = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1).min(every)) => {}
            () = shutdown.cancelled() => return,
        }
        store.check_disk();
        if store.stuck_for() > STUCK_EXIT {
            // sled never finishes a flush after a write error (seen when the disk filled up
            // under it): nothing but a new process takes events again. What was answered 200
            // is on disk; what waits was answered 429 or gets no answer, and HighLevel retries.
            error!(
                stuck = ?store.stuck_for(),
                "the store has been writing one commit too long; exiting so that a restart recovers"
            );
            std::process::exit(1);
        }
        let closing = store.clone();
        match tokio::task::spawn_blocking(move || closing.close_idle(relay::READ_AHEAD)).await {
            Ok(0) => {}
            Ok(closed) => debug!(buckets = closed, "closed idle buckets"),
            Err(e) => warn!(error = %e, "closing idle buckets failed"),
        }
        if tokio::time::Instant::now() < next_sweep {
            continue;
        }
        next_sweep = tokio::time::Instant::now() + every;
        match store.sweep().await {
            Ok(report) if report.buckets > 0 => info!(
                buckets = report.buckets,
                events = report.events,
                "removed expired events"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sweep failed"),
        }
    }
}
