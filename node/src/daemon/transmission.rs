//! A subset of the Transmission RPC (protocol of Transmission 3/4, `rpc-version` 16) at
//! `/transmission/rpc`, enough for `transmission-remote` and similar tools:
//! `torrent-add` (`filename` a magnet link or info-hash, or `metainfo` base64),
//! `torrent-get` (the fields `transmission-remote -l`, `-i`, `-if` and `-ip` ask for),
//! `torrent-remove` (with `delete-local-data`), `torrent-start`, `torrent-start-now`,
//! `torrent-stop`, `session-get` and `session-stats`.
//!
//! The CSRF handshake is Transmission's: a request without the current
//! `X-Transmission-Session-Id` gets 409 with the id in that header, and the client sends it
//! again with it. `filename` never names a file on the daemon's machine (Transmission would
//! read it); only magnet links and info-hashes are taken.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};
use wire::infohash::InfoHash;

use super::api::{magnet_of, ApiError, AppState};
use super::{AddRequest, Daemon, DaemonError, State as TState, Summary};

pub const SESSION_HEADER: &str = "x-transmission-session-id";

/// Transmission's torrent status codes.
const STOPPED: i64 = 0;
const CHECK: i64 = 2;
const DOWNLOAD: i64 = 4;
const SEED: i64 = 6;

fn conflict(st: &AppState) -> Response {
    let mut r = (
        StatusCode::CONFLICT,
        axum::Json(json!({
            "error": "missing or stale X-Transmission-Session-Id: send the request again with the id in this response's header"
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&st.rpc_session_id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

fn has_session(st: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get(SESSION_HEADER)
        .is_some_and(|v| v.as_bytes() == st.rpc_session_id.as_bytes())
}

/// GET: clients fetch the session id this way; with it, they are told to POST.
pub async fn rpc_get(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !has_session(&st, &headers) {
        return conflict(&st);
    }
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "the Transmission RPC takes POST with a JSON body".into(),
    )
    .into_response()
}

fn reply(result: &str, arguments: Value, tag: Option<&Value>) -> Response {
    let mut v = json!({ "result": result, "arguments": arguments });
    if let Some(t) = tag {
        v["tag"] = t.clone();
    }
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn bad(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "result": msg, "error": msg, "arguments": {} })),
    )
        .into_response()
}

pub async fn rpc(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !has_session(&st, &headers) {
        return conflict(&st);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("malformed JSON: {e}")),
    };
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return bad("missing \"method\"".into());
    };
    let empty = Value::Object(Map::new());
    let args = req.get("arguments").unwrap_or(&empty);
    if !args.is_object() {
        return bad("\"arguments\" must be an object".into());
    }
    let tag = req.get("tag");
    let d = &st.daemon;
    let out = match method {
        "session-get" => Ok(session_get(d)),
        "session-stats" => Ok(session_stats(d)),
        "torrent-get" => torrent_get(d, args),
        "torrent-add" => torrent_add(d, args).await,
        "torrent-remove" => torrent_remove(d, args).await,
        "torrent-start" | "torrent-start-now" => each(d, args, Action::Start).await,
        "torrent-stop" => each(d, args, Action::Stop).await,
        "session-set" | "torrent-set" | "queue-move-top" | "queue-move-bottom"
        | "queue-move-up" | "queue-move-down" => {
            // Accepted and ignored: tools send these as part of other commands.
            Ok(json!({}))
        }
        other => Err(format!(
            "method {:?} is not supported by swarm's Transmission RPC subset",
            super::truncate(other, 40)
        )),
    };
    match out {
        Ok(a) => reply("success", a, tag),
        Err(msg) => reply(&msg, json!({}), tag),
    }
}

fn session_get(d: &Daemon) -> Value {
    json!({
        "version": concat!("3.00 (swarm ", env!("CARGO_PKG_VERSION"), ")"),
        "rpc-version": 16,
        "rpc-version-minimum": 1,
        "download-dir": d.out_dir().display().to_string(),
        "peer-port": d.listen_addr().port(),
        "dht-enabled": d.dht_enabled(),
        "pex-enabled": true,
        "lpd-enabled": false,
        "utp-enabled": false,
        "encryption": "preferred",
        "port-forwarding-enabled": false,
        "start-added-torrents": true,
        "speed-limit-down-enabled": false,
        "speed-limit-up-enabled": false,
        "alt-speed-enabled": false,
        "seedRatioLimited": false,
        "config-dir": "",
    })
}

fn session_stats(d: &Daemon) -> Value {
    let all = d.list();
    let active = all.iter().filter(|s| s.state != TState::Paused).count();
    let sum = |f: fn(&wire::session::TorrentStats) -> f64| -> f64 {
        all.iter()
            .filter(|s| s.state != TState::Paused)
            .filter_map(|s| s.stats.as_ref())
            .map(f)
            .sum()
    };
    let (rm_down, rm_up) = d.removed_totals();
    let down = all.iter().map(|s| s.total_down).sum::<u64>() + rm_down;
    let up = all.iter().map(|s| s.total_up).sum::<u64>() + rm_up;
    let secs = d.uptime().as_secs();
    let stats = json!({
        "uploadedBytes": up, "downloadedBytes": down, "filesAdded": all.len(),
        "sessionCount": 1, "secondsActive": secs,
    });
    json!({
        "activeTorrentCount": active,
        "pausedTorrentCount": all.len() - active,
        "torrentCount": all.len(),
        "downloadSpeed": sum(|s| s.download_rate) as u64,
        "uploadSpeed": sum(|s| s.upload_rate) as u64,
        "current-stats": stats,
        "cumulative-stats": stats,
    })
}

/// The torrents `ids` names: absent = all; a number, a hash string, a list of them, or
/// `"recently-active"` (all, here).
fn select(d: &Daemon, args: &Value) -> Result<Vec<InfoHash>, String> {
    let all = || d.list().into_iter().map(|s| s.info_hash).collect();
    let one = |v: &Value| -> Result<Option<InfoHash>, String> {
        if let Some(n) = v.as_u64() {
            return Ok(u32::try_from(n).ok().and_then(|n| d.by_id(n)));
        }
        if let Some(s) = v.as_str() {
            return super::parse_info_hash(s)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        Err(format!("bad id {v}: expected a number or an info-hash"))
    };
    match args.get("ids") {
        None | Some(Value::Null) => Ok(all()),
        Some(Value::String(s)) if s == "recently-active" => Ok(all()),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a {
                if let Some(ih) = one(v)? {
                    out.push(ih);
                }
            }
            Ok(out)
        }
        Some(v) => Ok(one(v)?.into_iter().collect()),
    }
}

fn status_of(s: &Summary) -> i64 {
    match s.state {
        TState::Paused | TState::Stopping | TState::Error => STOPPED,
        TState::Starting => CHECK,
        TState::Metadata | TState::Downloading => DOWNLOAD,
        TState::Seeding => SEED,
    }
}

/// One field of `torrent-get` (None: a field we do not know, left out).
fn field(s: &Summary, name: &str) -> Option<Value> {
    let st = s.stats.clone().unwrap_or_default();
    let paused = s.state == TState::Paused;
    let known = st.have_metadata || s.meta.is_some();
    let total = s
        .meta
        .as_ref()
        .map_or(st.total_length, |m| m.info.total_length);
    let left = if st.have_metadata {
        st.bytes_left
    } else if st.complete {
        0
    } else {
        total
    };
    let rate_down = if paused { 0.0 } else { st.download_rate };
    let rate_up = if paused { 0.0 } else { st.upload_rate };
    let peers = if paused { Vec::new() } else { st.peers.clone() };
    // Transmission: -1 not available (done), -2 unknown.
    let eta = if !known {
        -2
    } else if left == 0 {
        -1
    } else if rate_down >= 1.0 {
        (left as f64 / rate_down) as i64
    } else {
        -2
    };
    let piece_size = s.meta.as_ref().map_or(0, |m| m.info.piece_length);
    let v = match name {
        "id" => json!(s.id),
        "name" => json!(s.name.clone().unwrap_or_else(|| s.info_hash.to_hex())),
        "hashString" => json!(s.info_hash.to_hex()),
        "magnetLink" => json!(magnet_of(s)),
        "status" => json!(status_of(s)),
        "error" => json!(if s.error.is_some() { 3 } else { 0 }),
        "errorString" => json!(s.error.clone().unwrap_or_default()),
        // Transmission: stopped after reaching a seed ratio or idle limit; never here.
        "isFinished" => json!(false),
        "isStalled" => json!(false),
        "isPrivate" => json!(s.meta.as_ref().is_some_and(|m| m.info.private)),
        "totalSize" | "sizeWhenDone" => json!(total),
        "leftUntilDone" => json!(left),
        "desiredAvailable" => json!(0),
        "haveValid" => json!(total.saturating_sub(left)),
        "haveUnchecked" => json!(0),
        "corruptEver" => json!(st.wasted),
        "percentDone" => json!(s.progress()),
        "metadataPercentComplete" => json!(if known { 1.0 } else { 0.0 }),
        "recheckProgress" => json!(0.0),
        "rateDownload" => json!(rate_down as u64),
        "rateUpload" => json!(rate_up as u64),
        "downloadedEver" => json!(s.total_down),
        "uploadedEver" => json!(s.total_up),
        "uploadRatio" => {
            if st.downloaded == 0 && total == 0 {
                json!(-1)
            } else {
                let base = if st.downloaded > 0 {
                    st.downloaded
                } else {
                    total
                };
                json!(st.uploaded as f64 / base as f64)
            }
        }
        "eta" | "etaIdle" => json!(eta),
        "peersConnected" => json!(peers.len()),
        "peersGettingFromUs" => json!(peers.iter().filter(|p| p.upload_rate > 0.0).count()),
        "peersSendingToUs" => json!(peers.iter().filter(|p| p.download_rate > 0.0).count()),
        "webseedsSendingToUs" => json!(0),
        "peer-limit" => json!(200),
        "pieceCount" => json!(st.piece_count),
        "pieceSize" => json!(piece_size),
        "downloadDir" => json!(s.out_dir.display().to_string()),
        "addedDate" | "startDate" | "activityDate" => json!(s.added),
        "doneDate" | "dateCreated" => json!(0),
        "secondsDownloading" | "secondsSeeding" => json!(st.elapsed.as_secs()),
        "comment" => json!(s
            .meta
            .as_ref()
            .and_then(|m| m.comment.clone())
            .unwrap_or_default()),
        "creator" => json!(s
            .meta
            .as_ref()
            .and_then(|m| m.created_by.clone())
            .unwrap_or_default()),
        "source" => json!(""),
        "labels" | "trackers" | "trackerStats" | "webseeds" => json!([]),
        "bandwidthPriority" | "queuePosition" => json!(0),
        "honorsSessionLimits" => json!(true),
        "downloadLimited" | "uploadLimited" => json!(false),
        "downloadLimit" | "uploadLimit" => json!(0),
        "seedRatioMode" | "seedIdleMode" => json!(0),
        "seedRatioLimit" => json!(0.0),
        "seedIdleLimit" => json!(0),
        "files" | "fileStats" => {
            // Per-file completion is not tracked by the session: whole when complete,
            // otherwise the torrent's fraction of each file (an estimate).
            let frac = s.progress();
            let files: Vec<Value> = s
                .meta
                .as_ref()
                .map(|m| {
                    m.info
                        .files
                        .iter()
                        .filter(|f| !f.attr.padding)
                        .map(|f| {
                            let done = if st.complete {
                                f.length
                            } else {
                                (f.length as f64 * frac) as u64
                            };
                            if name == "files" {
                                json!({"name": f.path.join("/"), "length": f.length, "bytesCompleted": done})
                            } else {
                                json!({"bytesCompleted": done, "wanted": true, "priority": 0})
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(files)
        }
        "wanted" | "priorities" => {
            let n = s.meta.as_ref().map_or(0, |m| {
                m.info.files.iter().filter(|f| !f.attr.padding).count()
            });
            json!(vec![if name == "wanted" { 1 } else { 0 }; n])
        }
        "peers" => json!(peers
            .iter()
            .map(|p| {
                json!({
                    "address": p.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                    "port": p.addr.map_or(0, |a| a.port()),
                    "clientName": p.client.clone().unwrap_or_default(),
                    "rateToClient": p.download_rate as u64,
                    "rateToPeer": p.upload_rate as u64,
                    "progress": if p.is_seed { 1.0 } else { 0.0 },
                    "isEncrypted": false,
                    "isUTP": false,
                    "flagStr": if p.is_seed { "S" } else { "" },
                })
            })
            .collect::<Vec<_>>()),
        _ => return None,
    };
    Some(v)
}

fn torrent_get(d: &Daemon, args: &Value) -> Result<Value, String> {
    let Some(fields) = args.get("fields").and_then(Value::as_array) else {
        return Err("torrent-get needs \"fields\", a list of field names".into());
    };
    let wanted = select(d, args)?;
    let all = d.list();
    let torrents: Vec<Value> = all
        .iter()
        .filter(|s| wanted.contains(&s.info_hash))
        .map(|s| {
            let mut o = Map::new();
            for f in fields.iter().filter_map(Value::as_str) {
                if let Some(v) = field(s, f) {
                    o.insert(f.to_string(), v);
                }
            }
            Value::Object(o)
        })
        .collect();
    Ok(json!({ "torrents": torrents }))
}

async fn torrent_add(d: &Arc<Daemon>, args: &Value) -> Result<Value, String> {
    let paused = args.get("paused").and_then(Value::as_bool).unwrap_or(false);
    let dir = args.get("download-dir").and_then(Value::as_str);
    let req = if let Some(m) = args.get("metainfo").and_then(Value::as_str) {
        let compact: String = m.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("metainfo is not base64: {e}"))?;
        AddRequest::Torrent(bytes)
    } else if let Some(f) = args.get("filename").and_then(Value::as_str) {
        let f = f.trim();
        if f.len() >= 7 && f[..7].eq_ignore_ascii_case("magnet:") {
            AddRequest::Magnet(f.to_string())
        } else if let Ok(ih) = super::parse_info_hash(f) {
            AddRequest::Magnet(format!("magnet:?xt=urn:btih:{}", ih.to_hex()))
        } else {
            return Err(format!(
                "filename {:?} is not a magnet link or info-hash (files and URLs on the \
                 daemon's side are not read; send the .torrent as metainfo)",
                super::truncate(f, 100)
            ));
        }
    } else {
        return Err("torrent-add needs \"filename\" (a magnet link) or \"metainfo\"".into());
    };
    match d.add(req, dir, paused).await {
        Ok((ih, id)) => {
            let name = d
                .get(ih)
                .ok()
                .and_then(|s| s.name)
                .unwrap_or_else(|| ih.to_hex());
            Ok(json!({"torrent-added": {"id": id, "name": name, "hashString": ih.to_hex()}}))
        }
        // Transmission answers a duplicate with success and `torrent-duplicate`.
        Err(DaemonError::Conflict(_)) => Ok(duplicate_of(d, args)),
        Err(e) => Err(e.to_string()),
    }
}

fn duplicate_of(d: &Daemon, args: &Value) -> Value {
    // Find which torrent it was: by the magnet's hash or the metainfo's.
    let ih = args
        .get("filename")
        .and_then(Value::as_str)
        .and_then(|f| {
            wire::magnet::Magnet::parse(f.trim())
                .ok()
                .map(|m| m.info_hash)
        })
        .or_else(|| {
            let m = args.get("metainfo")?.as_str()?;
            let compact: String = m.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let b = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?;
            wire::metainfo::Metainfo::from_bytes(&b)
                .ok()
                .map(|m| m.info_hash)
        })
        .or_else(|| super::parse_info_hash(args.get("filename")?.as_str()?.trim()).ok());
    match ih.and_then(|ih| d.get(ih).ok()) {
        Some(s) => json!({"torrent-duplicate": {
            "id": s.id,
            "name": s.name.clone().unwrap_or_else(|| s.info_hash.to_hex()),
            "hashString": s.info_hash.to_hex(),
        }}),
        None => json!({}),
    }
}

async fn torrent_remove(d: &Daemon, args: &Value) -> Result<Value, String> {
    let delete = args
        .get("delete-local-data")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for ih in select(d, args)? {
        match d.remove(ih, delete).await {
            Ok(_) | Err(DaemonError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(json!({}))
}

enum Action {
    Start,
    Stop,
}

async fn each(d: &Arc<Daemon>, args: &Value, action: Action) -> Result<Value, String> {
    for ih in select(d, args)? {
        let r = match action {
            Action::Start => d.resume(ih).await,
            Action::Stop => d.pause(ih).await,
        };
        match r {
            Ok(()) | Err(DaemonError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(json!({}))
}
