//! `hlgate events`: what `GET /v1/events` answers, as a table or as its JSON, asked of the
//! running gateway or, when nothing answers on the admin listener, read from the data dir
//! without taking any lock a start needs (`store::open_read_only`).

use clap::Args;

use crate::config::Settings;
use crate::http::{event_json, page_json, parse_query};

/// The filters of `GET /v1/events`, or one event by its seq.
#[derive(Args, Debug, Default)]
pub struct EventsArgs {
    /// Show this one event (its body and the message it is published as).
    pub seq: Option<u64>,
    /// The dedup key (the webhookId when the body has one).
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub webhook_id: Option<String>,
    /// The tenant: locationId, or companyId for agency events.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The event type, e.g. ContactCreate.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Accepted at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Accepted at or before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// pending, published, quarantined or lost.
    #[arg(long)]
    pub state: Option<String>,
    /// A substring of the body (needs a window of at most 24 h, or a tenant or type).
    #[arg(long)]
    pub q: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
    /// The cursor a previous page printed as `next`.
    #[arg(long)]
    pub after: Option<String>,
    /// asc (oldest first) or desc (newest first, the default).
    #[arg(long)]
    pub order: Option<String>,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl EventsArgs {
    /// The query string `GET /v1/events` takes for these filters.
    fn query_string(&self) -> String {
        let mut url = reqwest::Url::parse("http://hlgate/v1/events").expect("a valid URL");
        {
            let mut pairs = url.query_pairs_mut();
            let text = [
                ("key", &self.key),
                ("webhook_id", &self.webhook_id),
                ("tenant", &self.tenant),
                ("type", &self.event_type),
                ("since", &self.since),
                ("until", &self.until),
                ("state", &self.state),
                ("q", &self.q),
                ("after", &self.after),
                ("order", &self.order),
            ];
            for (name, value) in text {
                if let Some(v) = value {
                    pairs.append_pair(name, v);
                }
            }
            if let Some(limit) = self.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
        }
        url.query().unwrap_or("").to_string()
    }
}

/// `hlgate events`.
pub async fn events(settings: &Settings, args: EventsArgs) -> Result<(), String> {
    let query = args.query_string();
    let path = match args.seq {
        Some(seq) => format!("/v1/events/{seq}"),
        None => format!("/v1/events?{query}"),
    };
    let answer = match super::admin_request(settings, &path).await? {
        Some((200, text)) => {
            serde_json::from_str(&text).map_err(|_| format!("unexpected answer: {text}"))?
        }
        Some((status, text)) => return Err(format!("GET {path} answered {status}: {text}")),
        None => {
            eprintln!("hlgate is not running: events read from the store");
            read_stored(settings, args.seq, &query)?
        }
    };
    if args.json {
        println!("{answer}");
    } else if args.seq.is_some() {
        print_one(&answer);
    } else {
        print_page(&answer);
    }
    Ok(())
}

/// What the admin API would answer, read from the stopped gateway's data dir.
fn read_stored(
    settings: &Settings,
    seq: Option<u64>,
    query: &str,
) -> Result<serde_json::Value, String> {
    let parsed = match seq {
        Some(_) => None,
        // Checked before the store is opened, as the admin API checks it.
        None => Some(parse_query(query, crate::entry::now_ms()).map_err(|e| e.message)?),
    };
    let lookup = crate::store::open_read_only(&settings.store.data_dir)
        .map_err(|e| format!("hlgate is not running and the store cannot be read: {e}"))?;
    match (seq, parsed) {
        (Some(seq), _) => match lookup.one(seq).map_err(|e| e.to_string())? {
            Some(found) => Ok(event_json(&found, true)),
            None => Err(format!(
                "no event at seq {seq}: never stored, or past the retention"
            )),
        },
        (None, Some(query)) => {
            let page = lookup.page(&query).map_err(|e| e.to_string())?;
            Ok(page_json(&page, query.ascending))
        }
        (None, None) => unreachable!("a query is parsed when no seq is given"),
    }
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_page(page: &serde_json::Value) {
    println!(
        "{:<10} {:<24} {:<12} {:<24} {:<24} KEY",
        "SEQ", "RECEIVED_AT", "STATE", "TYPE", "TENANT"
    );
    for e in page["events"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<24} {:<12} {:<24} {:<24} {}",
            cell(&e["seq"]),
            cell(&e["received_at"]),
            cell(&e["state"]),
            cell(&e["type"]),
            cell(&e["tenant"]),
            cell(&e["key"]),
        );
    }
    if let Some(next) = page["next"].as_str() {
        println!("next: --after {next}");
    }
}

fn print_one(event: &serde_json::Value) {
    let Some(fields) = event.as_object() else {
        println!("{event}");
        return;
    };
    for (name, value) in fields {
        match name.as_str() {
            "body" | "headers" | "properties" => {
                let text = serde_json::to_string_pretty(value).unwrap_or_default();
                println!("{name}:\n{text}");
            }
            _ => println!("{name}: {}", cell(value)),
        }
    }
}
