//! The daemon's web page in a real headless browser (Debian's chromium, driven over the
//! DevTools protocol): paste a magnet link of a torrent a `swarm seed` process serves,
//! click Add, watch the row's progress bar reach 100%, open the per-peer breakdown, pause
//! and remove. Skips, with a reason, when chromium is missing (fails under
//! `REQUIRE_INTEROP=1`). With `SWARM_WEB_SCREENSHOT=FILE.png` it also saves a screenshot.

use std::io::BufRead;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{swarm_bin, test_payload, wait_until_every, write_file, DaemonProc, Reaper};

const LIMIT: Duration = Duration::from_secs(90);

/// A page of a headless chromium, over its DevTools WebSocket.
struct Browser {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    _proc: Reaper,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-domain-reliability",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,700",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        let stderr = child.stderr.take().unwrap();
        let proc = Reaper(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let line = tests::wait_line(&rx, "DevTools listening on ws://", LIMIT);
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let hostport = line
            .split("ws://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("DevTools address")
            .to_string();
        // The page target's own WebSocket.
        let mut page_ws = None;
        let ok = tests::wait_until(LIMIT, || {
            let Ok(r) = node::http::request(&hostport, "GET", "/json/list", &[], b"", LIMIT) else {
                return false;
            };
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            page_ws = v.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            page_ws.is_some()
        });
        assert!(ok, "no page target in chromium");
        let url = page_ws.unwrap();
        let stream = TcpStream::connect(&hostport).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket");
        Browser {
            ws,
            next_id: 1,
            _proc: proc,
            _profile: profile,
        }
    }

    /// One DevTools command; its `result` (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(tungstenite::Message::text(msg)).expect("send");
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            let m = self.ws.read().expect("DevTools read");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
        panic!("no answer to {method} within {LIMIT:?}");
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; its last value.
    fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let mut last = Value::Null;
        let ok = wait_until_every(LIMIT, Duration::from_millis(200), || {
            last = self.eval(expr);
            !(last.is_null() || last == false || last == "")
        });
        assert!(ok, "{what}: not within {LIMIT:?} (last {last})");
        last
    }
}

#[test]
fn web_page_adds_a_magnet_and_shows_it_reach_100_percent() {
    if !tests::clients_installed(module_path!(), &["chromium"], "apt-get install -y chromium") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(3 * 1024 * 1024 + 99, 61);
    let file = write_file(&dir.path().join("seed"), "seen-in-a-browser.bin", &data);
    let (_seed, magnet, seed_addr) =
        tests::start_seed_no_dht(swarm_bin!(), &file, &dir.path().join("seed-state"));
    let ih = magnet["magnet:?xt=urn:btih:".len()..][..40].to_string();
    let out = dir.path().join("out");
    // Rate-limited, so the progress bar is seen on its way.
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &out,
        &["--no-dht", "--limit-down", "1M"],
    );
    let mut b = Browser::start();
    b.call("Page.enable", json!({}));
    b.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/", d.api) }),
    );
    b.wait_for(
        "page loaded",
        "document.readyState === 'complete' && !!document.getElementById('magnet') \
         && document.querySelector('td.empty') && document.querySelector('td.empty').textContent.includes('No torrents')",
    );
    // Paste the magnet link and click Add.
    b.eval(&format!(
        "document.getElementById('magnet').value = {}; document.getElementById('add-button').click(); true",
        json!(magnet)
    ));
    let row = format!("document.querySelector('tr.torrent[data-info-hash=\"{ih}\"]')");
    b.wait_for("the row appears", &format!("!!{row}"));
    // Open the per-peer breakdown while it downloads.
    b.eval(&format!("{row}.click(); true"));
    let partial = b.wait_for(
        "progress seen below 100%",
        &format!(
            "(() => {{ const r = {row}; if (!r) return null; const p = Number(r.dataset.progress); \
             return (p > 0.6 && p < 1 && document.querySelector('tr.peer')) || r.dataset.state === 'seeding' \
             ? r.dataset.progress : null }})()"
        ),
    );
    if let Ok(path) = std::env::var("SWARM_WEB_SCREENSHOT") {
        use base64::Engine;
        let shot = b.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot saved to {path}");
    }
    let label = b.wait_for(
        "100% in the progress bar",
        &format!(
            "(() => {{ const r = {row}; return r && r.dataset.state === 'seeding' \
             && r.dataset.progress === '1' ? r.querySelector('.bar span').textContent : null }})()"
        ),
    );
    assert_eq!(label, "100.0%");
    assert_eq!(
        std::fs::read(out.join("seen-in-a-browser.bin")).unwrap(),
        data
    );
    let name = b.eval(&format!("{row}.querySelector('td.name').textContent"));
    assert_eq!(name, "seen-in-a-browser.bin");
    // The breakdown: the seeder sent everything.
    let contribution = b.wait_for(
        "the seeder in the breakdown",
        &format!(
            "Array.from(document.querySelectorAll('tr.contribution')).map(r => r.textContent)\
             .find(t => t.includes('{seed_addr}')) || null"
        ),
    );
    let text = contribution.as_str().unwrap();
    assert!(text.contains("swarm") && text.contains("100.0%"), "{text}");
    // Pause, then remove (confirm() answered yes).
    b.eval(&format!(
        "{row}.querySelector('button.pause').click(); true"
    ));
    b.wait_for(
        "paused",
        &format!("{row} && {row}.dataset.state === 'paused'"),
    );
    b.eval(&format!(
        "window.confirm = () => true; {row}.querySelector('button.remove').click(); true"
    ));
    b.wait_for("row gone", &format!("!{row}"));
    let (_, v) = d.get("/api/torrents");
    assert!(v["torrents"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        out.join("seen-in-a-browser.bin").exists(),
        "remove keeps the data"
    );
    // The same torrent again, as a .torrent file picked in the page: it checks the data
    // that is still there and seeds.
    let made = wire::create::create_torrent(&file, &Default::default(), &|_| {}).unwrap();
    assert_eq!(made.metainfo.info_hash.to_hex(), ih);
    let tfile = dir.path().join("picked.torrent");
    std::fs::write(&tfile, &made.bytes).unwrap();
    let doc = b.call("DOM.getDocument", json!({}));
    let input = b.call(
        "DOM.querySelector",
        json!({ "nodeId": doc["root"]["nodeId"], "selector": "#torrent-file" }),
    );
    b.call(
        "DOM.setFileInputFiles",
        json!({ "files": [tfile.display().to_string()], "nodeId": input["nodeId"] }),
    );
    b.wait_for(
        "the picked .torrent seeding",
        &format!("{row} && {row}.dataset.state === 'seeding' && {row}.dataset.progress === '1'"),
    );
    eprintln!("progress seen on the way: {partial}");
}
