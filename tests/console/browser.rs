//! Headless Chromium through chromedriver (WebDriver), one at a time: a driver on a free
//! loopback port, a session with a profile of its own, and the waits the tests need.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How to get what these tests need, said when it is missing.
const INSTALL: &str = "the console's browser tests need Chromium and its WebDriver: \
     `apt-get install chromium chromium-driver` (scripts/test installs them when missing)";

/// A hang guard only: every wait ends as soon as what it waits for is there.
const PATIENCE: Duration = Duration::from_secs(60);

/// Chromium is heavy for a small machine: one browser at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Where the driver listens and the session's id: a failed test ends the session from
    /// `Drop`, since a killed driver leaves its browser running.
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The browser, or `None` (after saying why) where Chromium is missing outside CI; under
/// `CI=true` a missing browser fails the test.
pub async fn open() -> Option<Browser> {
    let driver = on_path(&["chromedriver"]);
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{INSTALL}");
        }
        eprintln!("skipped: {INSTALL}");
        return None;
    };
    let turn = ONE_AT_A_TIME.lock().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let mut answered = false;
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !answered {
        let _ = child.kill();
        panic!("chromedriver did not listen on port {port}");
    }
    let profile = tempfile::tempdir().unwrap();
    let options = json!({
        "binary": chromium,
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,800", "--hide-scrollbars", "--no-first-run",
            format!("--user-data-dir={}", profile.path().display()),
        ],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    let session = client.session_id().await.unwrap();
    Some(Browser {
        client,
        driver: child,
        port,
        session,
        _profile: profile,
        _turn: turn,
    })
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` (a JavaScript expression) is truthy, and returns its value.
    pub async fn until(&self, script: &str) -> Value {
        let body = format!("return ({script});");
        for _ in 0..(PATIENCE.as_millis() / 100) {
            let v = self.js(&body).await;
            if !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("") {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never true: {script}");
    }

    /// The text of the first `css` once it contains `wanted`.
    pub async fn text_with(&self, css: &str, wanted: &str) -> String {
        let probe = format!(
            "(document.querySelector({css:?})?.textContent ?? '').includes({wanted:?}) && \
             document.querySelector({css:?}).textContent"
        );
        self.until(&probe).await.as_str().unwrap().to_string()
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Types into the field `css` after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// The first button whose text is `label`, clicked.
    pub async fn press(&self, label: &str) {
        let found = format!(
            "[...document.querySelectorAll('button')].some(b => b.textContent.trim() === {label:?})"
        );
        self.until(&found).await;
        let path = format!("//button[normalize-space(.)={label:?}]");
        let button = self.client.find(Locator::XPath(&path)).await.unwrap();
        button.click().await.unwrap();
    }

    /// No `alert`, `confirm` or `prompt` is open.
    pub async fn assert_no_dialog(&self) {
        if let Ok(text) = self.client.get_alert_text().await {
            panic!("a dialog opened: {text:?}");
        }
    }

    /// Every request the page made (navigation and resources): its URL and bytes transferred.
    pub async fn requests(&self) -> Vec<(String, u64)> {
        let entries = self
            .js("return performance.getEntriesByType('navigation')\
                 .concat(performance.getEntriesByType('resource'))\
                 .map(e => [e.name, e.transferSize]);")
            .await;
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().to_string(),
                    e[1].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Every field labelled, every button, chart and table named: what a screen reader needs.
    pub async fn assert_labelled(&self) {
        let unlabelled = self
            .js(
                "return [...document.querySelectorAll('input, select')]\
                   .filter(i => i.labels.length === 0 && !i.getAttribute('aria-label')).map(i => i.id)\
                 .concat([...document.querySelectorAll('button')]\
                   .filter(b => !b.hidden && b.textContent.trim() === '').map(b => b.outerHTML))\
                 .concat([...document.querySelectorAll('svg')]\
                   .filter(s => !s.getAttribute('aria-label')).map(s => 'svg'))\
                 .concat([...document.querySelectorAll('table')]\
                   .filter(t => !t.caption).map(t => 'table'));",
            )
            .await;
        assert_eq!(unlabelled, json!([]), "unnamed controls");
    }

    /// Nothing wider than the window: readable without scrolling sideways.
    pub async fn assert_fits(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
        let fits = self
            .js("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        let (content, window) = (fits[0].as_u64().unwrap(), fits[1].as_u64().unwrap());
        assert!(content <= window, "{content} px of content in {window} px");
    }

    /// Saves a PNG of the window, `height` pixels tall at 1280 wide, as `name` in
    /// `HLGATE_CONSOLE_SCREENSHOTS` when it is set.
    pub async fn screenshot(&self, name: &str, height: u32) {
        let Some(dir) = std::env::var_os("HLGATE_CONSOLE_SCREENSHOTS") else {
            return;
        };
        self.client.set_window_size(1280, height).await.unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(name), png).unwrap();
    }

    pub async fn close(mut self) {
        if self.client.clone().close().await.is_ok() {
            self.session = None;
        }
    }
}

impl Drop for Browser {
    /// Ends the session (which quits the browser) unless `close` did, then stops the driver:
    /// a failed test leaves no browser behind.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = end_session(self.port, &session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// WebDriver's `DELETE /session/{id}`, without the async runtime `Drop` cannot wait on.
fn end_session(port: u16, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}
