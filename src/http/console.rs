//! The operator console: a page over the admin API, served at `/` with its assets under
//! `/console/`. The files are in the binary (`console/` at build time), so a release build
//! serves it with nothing beside it. The page holds no data: it asks the admin API with the
//! admin token as a bearer header, so serving it needs no token (like `/healthz`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

use super::error::not_found;

/// Scripts and styles from this listener only, no inline script, no framing, no plugins; the
/// API calls go to the same origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every file of the console by its name under `/console/`, with its media type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../console/console.css"),
    ),
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("dom.js", JS, include_str!("../../console/dom.js")),
    ("chart.js", JS, include_str!("../../console/chart.js")),
    ("overview.js", JS, include_str!("../../console/overview.js")),
    ("events.js", JS, include_str!("../../console/events.js")),
    ("event.js", JS, include_str!("../../console/event.js")),
    ("tenants.js", JS, include_str!("../../console/tenants.js")),
    (
        "quarantine.js",
        JS,
        include_str!("../../console/quarantine.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../console/favicon.svg"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("../../console/index.html");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/console/{file}", web::get().to(asset));
}

async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == file.as_str()) {
        Some((_, media_type, text)) => page(media_type, text),
        None => not_found().await,
    }
}

/// A file with the headers that keep the page from being framed, sniffed or cached stale.
fn page(media_type: &'static str, text: &'static str) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response
        .content_type(media_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Small files: asked again each load, so a new binary's page is never mixed with old.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));
    response.body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_console_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name != "index.html" && !ASSETS.iter().any(|(served, _, _)| *served == name) {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "not in ASSETS: {missing:?}");
    }

    #[test]
    fn the_page_loads_its_scripts_from_this_listener_only() {
        assert!(INDEX.contains(r#"<script type="module" src="/console/app.js">"#));
        assert!(!INDEX.contains("<script>"), "no inline script");
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
    }
}
