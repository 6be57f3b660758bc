//! The command line: `serve` (default), `check-config`, `sign`, `keygen`, `outbox`, `tenants`,
//! `events` (`events.rs`), `healthcheck`, `store check`, `store accept-loss` and `listen`
//! (`listen.rs`, with the HTTP side in `forward.rs`).

mod events;
mod forward;
pub mod listen;

pub use events::{events, EventsArgs};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Parser, Subcommand};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};

use crate::config::Settings;
use crate::files::write_private;
use crate::oauth;
pub use crate::verify::ed25519_public_pem;
use crate::verify::{pem, Scheme};

#[derive(Parser, Debug)]
#[command(
    name = "hlgate",
    version,
    about = "Webhook gateway for HighLevel Marketplace apps"
)]
pub struct Cli {
    /// TOML file with settings (keys: the HLGATE_ names, lower-cased, without the prefix).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Load and validate the settings; print them with secrets redacted.
    CheckConfig,
    /// Sign a JSON file with a local Ed25519 or RSA private key (PKCS#8 PEM); print the
    /// signature header, or POST the file with it.
    Sign {
        /// Private key PEM (Ed25519 signs X-GHL-Signature, RSA signs X-WH-Signature).
        #[arg(long)]
        key: PathBuf,
        /// POST the signed body to this URL and print the answer.
        #[arg(long, value_name = "URL")]
        post: Option<String>,
        /// The JSON file to sign.
        file: PathBuf,
    },
    /// Generate an Ed25519 key pair for local testing: PREFIX.key (private) and PREFIX.pub.
    Keygen {
        /// Path prefix for the two files.
        #[arg(default_value = "hlgate-test")]
        prefix: PathBuf,
    },
    /// Show the outbox: depth and oldest entry (asks the running gateway, else reads the store).
    Outbox,
    /// List installs and their token state (never the tokens), following the pages.
    Tenants {
        /// Tenants asked for per request (above the admin API's maximum, its maximum).
        #[arg(long, default_value_t = 1000)]
        page_size: usize,
    },
    /// Look events up: a page of those that match, or one by its seq (asks the running
    /// gateway, else reads the store without taking its locks).
    Events(Box<EventsArgs>),
    /// Exit 0 when the running gateway's admin `/healthz` answers 200 (for container health checks).
    Healthcheck,
    /// Check the data dir offline for damage, or accept what it lost (hlgate must be stopped).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Forward events to a local URL, signed as HighLevel signed them, from a durable queue of
    /// your own (`hlgate.listen.NAME`).
    Listen(listen::ListenArgs),
}

#[derive(Subcommand, Debug)]
pub enum StoreAction {
    /// Read every bucket; report the seqs and dedup keys lost; exit 0 only when clean.
    Check,
    /// Record what `check` reports as given up, so that the next start is ready.
    AcceptLoss,
}

/// Loads settings from `--config` and the process environment.
pub fn load_settings(config: Option<&Path>) -> Result<Settings, String> {
    let text = match config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HLGATE_"))
        .collect();
    Settings::load(text.as_deref(), &env).map_err(|e| e.to_string())
}

/// `hlgate check-config`: the effective settings, and the schemas they load.
pub fn check_config(settings: &Settings) -> Result<(), String> {
    for (name, value) in settings.describe() {
        println!("{name}={value}");
    }
    let schemas = crate::schema::Schemas::embedded(settings.schema_mode)
        .map_err(|e| format!("cannot load the event schemas: {e}"))?;
    println!(
        "schemas: mode {}, {} loaded",
        settings.schema_mode.as_str(),
        schemas.len()
    );
    println!("configuration ok");
    Ok(())
}

/// A private key that can sign webhook bodies.
pub enum SigningKey {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl SigningKey {
    /// Reads a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM file.
    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let block = pem::pem_blocks(text)
            .into_iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
            .ok_or("no PRIVATE KEY block in the key file")?;
        let der = block.der.ok_or("the key's base64 is broken")?;
        if block.label == "RSA PRIVATE KEY" {
            return RsaKeyPair::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|e| format!("not a usable RSA key: {e}"));
        }
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(SigningKey::Ed25519(pair));
        }
        RsaKeyPair::from_pkcs8(&der)
            .map(SigningKey::Rsa)
            .map_err(|e| format!("neither an Ed25519 nor an RSA PKCS#8 key: {e}"))
    }

    /// The header name and base64 signature for `body`.
    pub fn sign(&self, body: &[u8]) -> (&'static str, String) {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            SigningKey::Ed25519(pair) => {
                (Scheme::Ed25519.header_name(), b64.encode(pair.sign(body)))
            }
            SigningKey::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), body, &mut sig)
                    .expect("RSA signing");
                (Scheme::RsaSha256.header_name(), b64.encode(sig))
            }
        }
    }
}

/// `hlgate sign`.
pub async fn sign(key: &Path, post: Option<&str>, file: &Path) -> Result<(), String> {
    let key_text =
        std::fs::read_to_string(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key = SigningKey::from_pem(&key_text)?;
    let body = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (header, signature) = key.sign(&body);
    let Some(url) = post else {
        println!("{header}: {signature}");
        return Ok(());
    };
    let response = reqwest::Client::new()
        .post(url)
        .header(header, &signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{} {text}", status.as_u16());
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// `hlgate keygen`: a fresh Ed25519 pair; the private file is made readable by its owner only.
pub fn keygen(prefix: &Path) -> Result<(), String> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "cannot generate a key")?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "cannot read the key")?;
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    write_private(
        &private,
        pem::encode("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
    )?;
    std::fs::write(&public, ed25519_public_pem(pair.public_key().as_ref()))
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    println!("wrote {} and {}", private.display(), public.display());
    println!(
        "run hlgate with HLGATE_ED25519_PUBLIC_KEYS=@{} to accept events signed with {}",
        public.display(),
        private.display()
    );
    Ok(())
}

/// GETs an admin endpoint of the running gateway; `Ok(None)` when nothing listens.
pub async fn admin_get(settings: &Settings, path: &str) -> Result<Option<String>, String> {
    Ok(admin_request(settings, path).await?.map(|(_, text)| text))
}

/// GETs an admin endpoint of the running gateway: its status and body; `Ok(None)` when
/// nothing listens.
async fn admin_request(settings: &Settings, path: &str) -> Result<Option<(u16, String)>, String> {
    let url = format!("http://{}{path}", settings.http.admin_listen);
    let mut request = reqwest::Client::new().get(&url);
    if let Some(token) = &settings.http.admin_token {
        request = request.bearer_auth(token.expose());
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            Ok(Some((status, r.text().await.map_err(|e| e.to_string())?)))
        }
        Err(e) if e.is_connect() => Ok(None),
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// `hlgate outbox`.
pub async fn outbox(settings: &Settings) -> Result<(), String> {
    if let Some(text) = admin_get(settings, "/readyz").await? {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| format!("unexpected answer: {text}"))?;
        println!("outbox_depth={}", v["outbox_depth"]);
        println!("oldest_pending_seconds={}", v["oldest_pending_seconds"]);
        println!("broker={}", v["broker"].as_str().unwrap_or("?"));
        return Ok(());
    }
    let store = crate::store::Store::open(&settings.store.data_dir, settings.store.dedup_retention)
        .map_err(|e| format!("hlgate is not running and the store cannot be opened: {e}"))?;
    let (depth, oldest) = store.outbox_state();
    println!("outbox_depth={depth}");
    println!("oldest_pending_seconds={oldest}");
    println!("broker=unknown (hlgate is not running)");
    Ok(())
}

/// `hlgate tenants`: asks the running gateway, else reads the vault in the data dir; either
/// way page by page, printed as the one document `{"tenants","pending_installs"}` once every
/// page is in, so that a failure half-way prints no partial document.
pub async fn tenants(settings: &Settings, page_size: usize) -> Result<(), String> {
    let mut query = oauth::PageQuery {
        limit: page_size.clamp(1, oauth::PAGE_MAX),
        ..Default::default()
    };
    let (stored, mut page) = match admin_get(settings, &page_path(&query)).await? {
        Some(text) => (None, parse_page(&text)?),
        None => {
            let stored = StoredTenants::open(settings)?;
            let page = stored.page(&query)?;
            (Some(stored), page)
        }
    };
    let pending = page["pending_installs"].take();
    let mut out = String::from("{\"tenants\":[");
    loop {
        for tenant in page["tenants"].as_array().into_iter().flatten() {
            if !out.ends_with('[') {
                out.push(',');
            }
            out.push_str(&tenant.to_string());
        }
        let Some(next) = page["next"].as_str() else {
            break;
        };
        // Cursors only move forward in tenant-id order: one that does not would loop forever.
        if query.after.as_deref().is_some_and(|after| next <= after) {
            return Err(format!("the cursor went back to {next:?}"));
        }
        query.after = Some(next.to_string());
        page = tenant_page(settings, stored.as_ref(), &query).await?;
    }
    println!("{out}],\"pending_installs\":{pending}}}");
    if stored.is_some() {
        eprintln!("hlgate is not running: tenants read from the store");
    }
    Ok(())
}

fn page_path(query: &oauth::PageQuery) -> String {
    match &query.after {
        Some(after) => format!(
            "/v1/tenants?limit={}&after={}",
            query.limit,
            oauth::encode(after)
        ),
        None => format!("/v1/tenants?limit={}", query.limit),
    }
}

/// The page `query` asks for, as JSON: from the stopped gateway's data dir when `stored`, else
/// from the running gateway.
async fn tenant_page(
    settings: &Settings,
    stored: Option<&StoredTenants>,
    query: &oauth::PageQuery,
) -> Result<serde_json::Value, String> {
    if let Some(stored) = stored {
        return stored.page(query);
    }
    let text = admin_get(settings, &page_path(query))
        .await?
        .ok_or("the gateway stopped answering while tenants were listed")?;
    parse_page(&text)
}

/// A page from the admin API; an error answer (or anything else) is reported as it came.
fn parse_page(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(page) if page["tenants"].is_array() => Ok(page),
        _ => Err(format!("GET /v1/tenants answered: {text}")),
    }
}

/// A stopped gateway's vault and waiting INSTALLs, read with the token key.
struct StoredTenants {
    /// `None` when no token is stored.
    vault: Option<oauth::Vault>,
    installs: crate::store::KeyedTree,
    /// The proxy's budget lives in the gateway's memory only: a stopped gateway's tenants
    /// start again with the configured one.
    rate: oauth::RateView,
}

impl StoredTenants {
    fn open(settings: &Settings) -> Result<StoredTenants, String> {
        let store =
            crate::store::Store::open(&settings.store.data_dir, settings.store.dedup_retention)
                .map_err(|e| {
                    format!("hlgate is not running and the store cannot be opened: {e}")
                })?;
        let tree = |name| {
            store
                .keyed_tree(name)
                .map_err(|e| format!("cannot read the {name} tree: {e}"))
        };
        let (records, installs) = (tree("tokens")?, tree("installs")?);
        let (configured, dir) = (settings.oauth.token_key.as_ref(), &settings.store.data_dir);
        let checks = tree(oauth::key::KEY_CHECK_TREE)?;
        // A missing or wrong key is refused as a start would refuse it.
        let state = oauth::key::key_state(records.clone(), &checks, configured, dir)
            .map_err(|e| e.to_string())?;
        let vault = match state {
            oauth::key::KeyState::Empty => None,
            oauth::key::KeyState::Opens(key, _) => Some(oauth::Vault::new(records, &key)),
        };
        let rate = oauth::RateView::starting(settings.api.burst, settings.api.daily);
        Ok(StoredTenants {
            vault,
            installs,
            rate,
        })
    }

    /// What `GET /v1/tenants` would answer for `query`: never a token.
    fn page(&self, query: &oauth::PageQuery) -> Result<serde_json::Value, String> {
        let mut page = match &self.vault {
            Some(vault) => oauth::tenant_page(vault, &self.installs, query)
                .map_err(|e| format!("cannot read the token vault: {e}"))?,
            None => oauth::TenantPage {
                tenants: Vec::new(),
                pending_installs: oauth::pending_installs(&self.installs),
                next: None,
            },
        };
        for view in &mut page.tenants {
            view.rate = Some(self.rate.clone());
        }
        serde_json::to_value(page).map_err(|e| e.to_string())
    }
}

/// `hlgate store check` and `hlgate store accept-loss`.
pub fn store(settings: &Settings, action: StoreAction) -> Result<(), String> {
    let (dir, retention) = (&settings.store.data_dir, settings.store.dedup_retention);
    match action {
        StoreAction::Check => {
            let vault = |trees: &crate::store::OfflineTrees| vault_line(settings, trees);
            let report =
                crate::store::check_with_vault(dir, retention, vault).map_err(|e| e.to_string())?;
            print!("{report}");
            if report.is_damaged() {
                return Err("the store is damaged".into());
            }
            if report.key_refused() {
                return Err("the token key does not open the stored tokens".into());
            }
        }
        StoreAction::AcceptLoss => {
            let acceptance =
                crate::store::accept_loss(dir, retention).map_err(|e| e.to_string())?;
            print!("{acceptance}");
        }
    }
    Ok(())
}

/// What `hlgate store check` says of the token vault under the configured key: `Err` when a
/// start would refuse it.
fn vault_line(settings: &Settings, trees: &crate::store::OfflineTrees) -> Result<String, String> {
    let tree = |name| trees.keyed_tree(name).map_err(|e| e.to_string());
    let state = oauth::key::key_state(
        tree("tokens")?,
        &tree(oauth::key::KEY_CHECK_TREE)?,
        settings.oauth.token_key.as_ref(),
        &settings.store.data_dir,
    )
    .map_err(|e| e.to_string())?;
    Ok(match state {
        oauth::key::KeyState::Empty => "no tokens stored".into(),
        oauth::key::KeyState::Opens(_, source) => format!("the token key from {source} opens it"),
    })
}

/// `hlgate healthcheck`.
pub async fn healthcheck(settings: &Settings) -> Result<(), String> {
    let mut host = settings.http.admin_listen;
    if host.ip().is_unspecified() {
        host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{host}/healthz");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    if response.status().is_success() {
        println!("ok");
        Ok(())
    } else {
        Err(format!("GET {url} answered {}", response.status()))
    }
}
