//! Wires everything: opens the store, builds the ingest use case and the token module, binds
//! both listeners (port 0 allowed), runs every background task on one tracker, and drains them
//! in order on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::health::{self, Clock, Health, Notifier, Tally, Watched};
use crate::highlevel::{ApiClient, HighLevelClient};
use crate::http::{self, AdminState, BindError, Holding, Listeners, PublicState, Servers};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::oauth::{
    key, refresher, Hooks, InstallSettings, Proxy, ProxySettings, TokenService, TokenServiceParts,
    VaultError,
};
use crate::publish::{relay, Relay, RelayConfig};
use crate::schema::Schemas;
use crate::store::{Store, StoreError};
use crate::traces::Tracer;
use crate::verify::Verifier;

/// How often the token schedule looks for tenants due for a refresh.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long one store commit may take before hlgate gives up on the process.
const STUCK_EXIT: Duration = Duration::from_secs(60);
/// How often a start that waits for disk space tries to open the store again.
const OPEN_RETRY: Duration = Duration::from_secs(1);
/// How long the answers given while the store could not open get to finish.
const HOLDING_STOP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot load the event schemas: {0}")]
    Schemas(#[from] crate::schema::SchemaError),
    #[error("token vault: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

impl StartupError {
    /// The data disk had no room for what opening the store writes (sled writes as it opens).
    /// The start then waits for space: exiting would make a restart loop, in which HighLevel
    /// finds the port closed where a 429 makes it deliver again later.
    pub fn is_no_space(&self) -> bool {
        self.store_error().is_some_and(StoreError::is_no_space)
    }

    fn is_locked(&self) -> bool {
        self.store_error().is_some_and(StoreError::is_locked)
    }

    fn store_error(&self) -> Option<&StoreError> {
        match self {
            StartupError::Store { source, .. } | StartupError::Vault(VaultError::Store(source)) => {
                Some(source)
            }
            _ => None,
        }
    }

    /// The data dir is damaged so that starting would hide it, or its token key is missing or
    /// wrong so that starting would lose every tenant: an operator must act first.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StartupError::Store {
                source: StoreError::Damaged(_),
                ..
            } | StartupError::Vault(VaultError::KeyMissing { .. } | VaultError::WrongKey { .. })
        )
    }
}

/// What serves once the store is open.
struct Opened {
    servers: Servers,
    store: Store,
    relay: Relay,
    tokens: Arc<TokenService>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    tracer: Tracer,
}

/// A built hlgate, listening, ready to run.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// `Err` while the store cannot open for want of disk space: the listeners, on which `run`
    /// answers 429 and 503 until it opens.
    opened: Result<Opened, Listeners>,
    settings: Settings,
    shutdown: CancellationToken,
    /// Every task: the servers, the relay, the sweeper, the refresher, what the token module
    /// starts, the health task and the alert sender. Shutdown waits for all of them.
    tasks: TaskTracker,
    /// Counts every webhook answer from the start, also while the store cannot open.
    tally: Arc<Tally>,
    clock: Clock,
}

/// The error of a store that cannot be opened or read in `dir`.
fn store_error(dir: &std::path::Path) -> impl Fn(StoreError) -> StartupError + '_ {
    move |source| StartupError::Store {
        dir: dir.display().to_string(),
        source,
    }
}

/// The vault (always: private tokens need no app credentials) and, with credentials, the client.
fn token_service(
    settings: &Settings,
    store: &Store,
    metrics: &Arc<Metrics>,
    tasks: &TaskTracker,
) -> Result<TokenService, StartupError> {
    let (oauth, data_dir) = (&settings.oauth, &settings.store.data_dir);
    let credentials = oauth.credentials.as_ref();
    let client = credentials.map(|c| {
        HighLevelClient::new(
            &oauth.base_url,
            &c.client_id,
            c.client_secret.clone(),
            c.redirect_uri.clone(),
        )
    });
    let tree = |name| store.keyed_tree(name).map_err(store_error(data_dir));
    let checks = tree(key::KEY_CHECK_TREE)?;
    let token_key = oauth.token_key.as_ref();
    let service = TokenService::new(TokenServiceParts {
        vault: key::open_vault(tree("tokens")?, &checks, token_key, data_dir)?,
        installs: tree("installs")?,
        refreshing: tree("refreshing")?,
        client,
        install: InstallSettings {
            marketplace_url: oauth.marketplace_url.clone(),
            redirect_uri: credentials.and_then(|c| c.redirect_uri.clone()),
            scopes: credentials.and_then(|c| c.scopes.clone()),
        },
        refresh_before: oauth.refresh_before,
        min_ttl: oauth.min_ttl,
        attach_tokens: oauth.attach_tokens,
        metrics: metrics.clone(),
        app_wide_budget: oauth.app_wide_budget,
        tasks: tasks.clone(),
    });
    service.index_vault()?;
    Ok(service)
}

/// The HighLevel API proxy, on the token module's tokens.
fn proxy(
    settings: &Settings,
    tokens: &Arc<TokenService>,
    metrics: &Arc<Metrics>,
    tracer: &Tracer,
) -> Proxy {
    let api = &settings.api;
    Proxy::new(
        tokens.clone(),
        ApiClient::new(&api.base_url, &api.version, api.timeout),
        ProxySettings {
            burst: api.burst,
            daily: api.daily,
            max_wait: api.max_wait,
        },
        metrics.clone(),
        tracer.clone(),
    )
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

/// The store and what is built on it, before the servers.
struct Core {
    store: Store,
    metrics: Arc<Metrics>,
    tokens: Arc<TokenService>,
    ingest: Arc<Ingest>,
    health: Arc<Health>,
}

/// Opens the store and builds the ingest use case, the token module and delivery health on it.
fn open_core(
    settings: &Settings,
    tasks: &TaskTracker,
    tally: &Arc<Tally>,
    clock: &Clock,
) -> Result<Core, StartupError> {
    let data_dir = &settings.store.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|e| StartupError::Store {
        dir: data_dir.display().to_string(),
        source: StoreError::io("cannot create the data dir", e),
    })?;
    let store =
        Store::open(data_dir, settings.store.dedup_retention).map_err(store_error(data_dir))?;
    store.limit_outbox(settings.store.outbox_max_events);
    report_damage(&store);
    let metrics = Arc::new(Metrics::default());
    let tokens = Arc::new(token_service(settings, &store, &metrics, tasks)?);
    let schemas = Arc::new(Schemas::embedded(settings.schema_mode)?);
    info!(
        schema_mode = settings.schema_mode.as_str(),
        schemas = schemas.len(),
        "event schemas compiled"
    );
    let checks = &settings.ingest;
    let ingest = Arc::new(Ingest {
        verifier: Verifier {
            ed25519: checks.ed25519_keys.clone(),
            rsa: checks.rsa_keys.clone(),
            accept_legacy_rsa: checks.accept_legacy_rsa,
        },
        store: store.clone(),
        schemas,
        metrics: metrics.clone(),
        retention: settings.store.dedup_retention,
        max_future_skew: checks.max_future_skew,
        tracer: Tracer::start(&settings.traces, &metrics),
    });
    // Last: it takes the tally's deliveries queue, which a failed start must not have taken.
    let attempts = store.attempts().map_err(store_error(data_dir))?;
    let health = Health::open(
        attempts,
        tally.clone(),
        clock.clone(),
        settings.alerts.clone(),
    )
    .map_err(store_error(data_dir))?;
    Ok(Core {
        store,
        metrics,
        tokens,
        ingest,
        health: Arc::new(health),
    })
}

/// The servers on `listeners` and the relay, over `core`.
fn assemble(
    settings: &Settings,
    core: Core,
    listeners: Listeners,
    shutdown: &CancellationToken,
    tally: &Arc<Tally>,
) -> Result<Opened, StartupError> {
    let Core {
        store,
        metrics,
        tokens,
        ingest,
        health,
    } = core;
    let tracer = ingest.tracer.clone();
    let servers = http::serve(
        &settings.http,
        listeners,
        PublicState::new(ingest, &settings.http, tokens.clone(), tally.clone()),
        AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            admin_token: settings.http.admin_token.clone(),
            outbox_max_events: settings.store.outbox_max_events,
            tokens: tokens.clone(),
            proxy: Arc::new(proxy(settings, &tokens, &metrics, &tracer)),
            proxy_tokens: settings.api.proxy_tokens.clone(),
            proxy_max_body_bytes: settings.api.max_body_bytes,
            shutdown: shutdown.clone(),
            health: health.clone(),
        },
    )?;
    let relay = Relay {
        config: RelayConfig {
            amqp_url: settings.amqp.url.clone(),
            exchange: settings.amqp.exchange.clone(),
            declare_topology: settings.amqp.declare_topology,
            nack_quarantine_after: settings.amqp.nack_quarantine_after,
            schema_mode: settings.schema_mode,
        },
        store: store.clone(),
        metrics: metrics.clone(),
        hooks: Some(Arc::new(Hooks(tokens.clone()))),
        tracer: tracer.clone(),
    };
    Ok(Opened {
        servers,
        store,
        relay,
        tokens,
        health,
        metrics,
        tracer,
    })
}

/// Answers on `listeners` as [`http::hold`] does, trying to open the store every
/// [`OPEN_RETRY`]; once it opens, the servers follow on the same listeners. `None` when the
/// shutdown token is cancelled first.
async fn wait_for_space(
    settings: &Settings,
    listeners: Listeners,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    (tally, clock): (&Arc<Tally>, &Clock),
) -> Result<Option<Opened>, StartupError> {
    let holding = Holding {
        admin_token: settings.http.admin_token.clone(),
        tally: tally.clone(),
    };
    let holding = http::hold(&listeners, holding)?.start(&TaskTracker::new());
    let core = loop {
        tokio::select! {
            () = tokio::time::sleep(OPEN_RETRY) => {}
            () = shutdown.cancelled() => {
                holding.stop(HOLDING_STOP).await;
                return Ok(None);
            }
        }
        match open_core(settings, tasks, tally, clock) {
            Ok(core) => break core,
            // A try that failed for want of space may hold sled's file lock for a moment.
            Err(e) if e.is_no_space() || e.is_locked() => {
                debug!(error = %e, "the store still cannot open")
            }
            Err(e) => {
                holding.stop(HOLDING_STOP).await;
                return Err(e);
            }
        }
    };
    // Connections that come meanwhile wait in the listeners' backlog for the servers below.
    holding.stop(HOLDING_STOP).await;
    info!("the data disk has room again: the store is open");
    assemble(settings, core, listeners, shutdown, tally).map(Some)
}

impl Application {
    /// Binds the listeners and opens the store; nothing runs until [`Application::run`]. A
    /// store that cannot open for want of disk space does not fail the build: `run` then
    /// answers webhooks 429 until it opens (see [`StartupError::is_no_space`]).
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        Application::build_with_clock(settings, Clock::system()).await
    }

    /// [`Application::build`] with the clock delivery health reads (tests move one by hand).
    pub async fn build_with_clock(
        settings: Settings,
        clock: Clock,
    ) -> Result<Application, StartupError> {
        let listeners = Listeners::bind(&settings.http)?;
        let (public_addr, admin_addr) = (listeners.public_addr(), listeners.admin_addr());
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let tally = Arc::new(Tally::new(clock.clone()));
        let opened = match open_core(&settings, &tasks, &tally, &clock) {
            Ok(core) => Ok(assemble(&settings, core, listeners, &shutdown, &tally)?),
            Err(e) if e.is_no_space() => {
                error!(
                    error = %e,
                    "the data disk is full: the store cannot open; webhooks get 429 and /readyz \
                     503 until there is space again"
                );
                Err(listeners)
            }
            Err(e) => return Err(e),
        };
        Ok(Application {
            public_addr,
            admin_addr,
            opened,
            settings,
            shutdown,
            tasks,
            tally,
            clock,
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

    /// Serves until the shutdown token is cancelled, then drains every task in order within the
    /// grace period: the listeners stop accepting and finish the requests in flight, the relay
    /// finishes its window and closes its AMQP connection, the sweeper and the token refresher
    /// finish what they started, and the store is flushed. Returns true when everything
    /// stopped in time.
    pub async fn run(self) -> bool {
        let Application {
            public_addr,
            admin_addr,
            opened,
            settings,
            shutdown,
            tasks,
            tally,
            clock,
        } = self;
        let counting = (&tally, &clock);
        let opened = match opened {
            Ok(opened) => opened,
            Err(listeners) => {
                match wait_for_space(&settings, listeners, &tasks, &shutdown, counting).await {
                    Ok(Some(opened)) => opened,
                    Ok(None) => return true,
                    Err(e) => {
                        error!(error = %e, "cannot start");
                        return false;
                    }
                }
            }
        };
        let Opened {
            servers,
            store,
            relay,
            tokens,
            health,
            metrics,
            tracer,
        } = opened;
        let grace = settings.http.shutdown_grace;
        let serving = servers.start(&tasks);
        tasks.spawn(relay.run(shutdown.child_token()));
        if tokens.client().is_some() {
            // On the token module's runtime, like every refresh it starts.
            tokens.spawn(refresher::run(
                tokens.clone(),
                REFRESH_EVERY,
                settings.oauth.refresh_concurrency,
                shutdown.child_token(),
            ));
        }
        let every = sweep_every(settings.store.dedup_retention);
        tasks.spawn(sweep(store.clone(), every, shutdown.child_token()));
        let notifier = settings
            .alerts
            .webhook_url
            .clone()
            .map(|url| Notifier::start(url, metrics.clone(), &tasks, shutdown.child_token()));
        let watched = Watched {
            store: store.clone(),
            metrics,
            tokens: tokens.clone(),
            notifier,
        };
        tasks.spawn(health::run(health.clone(), watched, shutdown.child_token()));
        tasks.close();
        info!(public = %public_addr, admin = %admin_addr, "hlgate serving");

        shutdown.cancelled().await;
        info!(?grace, "shutting down");
        let drain = async {
            // Stop taking webhooks first, finishing the requests in flight; their events are
            // stored. The other tasks saw the token and end after what they are doing.
            serving.stop(requests_deadline(grace)).await;
            tasks.wait().await;
            // After the listeners: the last answers are in the counts saved.
            health::save(health.clone()).await;
            // After every task: their last spans are queued. A collector that is away has
            // a second at most.
            tracer.shutdown(Duration::from_secs(1)).await;
            if let Err(e) = store.flush().await {
                warn!(error = %e, "final flush failed");
            }
        };
        match tokio::time::timeout(grace, drain).await {
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

/// How often expired buckets are looked for: a tenth of the retention, within bounds.
fn sweep_every(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Removes expired events and dedup keys a bucket at a time, closes the buckets that are
/// idle (see `Store::close_idle`), and watches the data disk.
async fn sweep(store: Store, every: Duration, shutdown: CancellationToken) {
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
