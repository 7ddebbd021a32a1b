//! The daemon over HTTP (axum): the JSON API under `/api`, the web page at `/`, Prometheus
//! text at `/metrics` and the Transmission RPC at `/transmission/rpc`.
//!
//! Every answer to a bad request is a 4xx with `{"error": "..."}` naming the cause; bodies
//! are bounded ([`MAX_BODY`]). Every request passes [`guard`]: the API token when one is
//! set (`Authorization: Bearer`, HTTP Basic with the token as password, or `?token=`), and
//! without a token (API on loopback) a `Host` that is a loopback name or address, so that a
//! web page on another origin cannot reach the API through DNS rebinding. A request with an
//! `Origin` other than the API's own is refused, and no CORS header is ever sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use wire::infohash::InfoHash;
use wire::magnet::Magnet;

use super::{parse_info_hash, AddRequest, Daemon, DaemonError, State as TState, Summary};

/// Largest request body: a .torrent (the metainfo parser's own bound is 64 MiB; a
/// base64 one in the Transmission RPC is 4/3 of that). Real .torrent files are far
/// smaller; the bound only stops a client from making us buffer without end.
pub const MAX_BODY: usize = 16 << 20;

/// The web page, served from the binary.
const INDEX_HTML: &str = include_str!("index.html");

/// What the handlers share.
pub struct AppState {
    pub daemon: Arc<Daemon>,
    /// Required on every request when set.
    pub token: Option<String>,
    /// The Transmission RPC's `X-Transmission-Session-Id`.
    pub rpc_session_id: String,
}

/// An error answer: status and `{"error": message}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let status = match &e {
            DaemonError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than the limit of {MAX_BODY} bytes")
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        ApiError(status, msg)
    }
}

type ApiResult = Result<Response, ApiError>;

/// The whole HTTP service.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/torrents", get(list).post(add))
        .route("/api/torrents/{ih}", get(detail).delete(remove))
        .route("/api/torrents/{ih}/pause", post(pause))
        .route("/api/torrents/{ih}/resume", post(resume))
        .route("/api/torrents/{ih}/files/{index}", get(super::stream::file))
        .route("/api/dht", get(dht))
        .route("/metrics", get(super::metrics::metrics))
        // transmission-remote asks for `/transmission/rpc/`, other clients without the slash.
        .route(
            "/transmission/rpc",
            post(super::transmission::rpc).get(super::transmission::rpc_get),
        )
        .route(
            "/transmission/rpc/",
            post(super::transmission::rpc).get(super::transmission::rpc_get),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves `router` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint".into(),
    )
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, if any.
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
        if let Some(b) = v.strip_prefix("Basic ") {
            // transmission-remote --auth USER:TOKEN: the password is the token.
            use base64::Engine;
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                if let Ok(s) = String::from_utf8(raw) {
                    if let Some((_, pw)) = s.split_once(':') {
                        return Some(pw.to_string());
                    }
                }
            }
        }
    }
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host part of a `Host` header value (`name:port`, `[v6]:port`, `name`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1.
fn is_loopback_host(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n == "localhost" || n.ends_with(".localhost") {
        return true;
    }
    n.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Token, Host and Origin checks on every request.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match &st.token {
        Some(token) => {
            let ok = presented_token(headers, req.uri().query())
                .is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes()));
            if !ok {
                let mut r = ApiError(
                    StatusCode::UNAUTHORIZED,
                    "this API needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN".into(),
                )
                .into_response();
                // Basic too: clients such as transmission-remote --auth USER:TOKEN send
                // their credentials only when challenged for them.
                r.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"swarm\""),
                );
                r.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"swarm\""),
                );
                return r;
            }
        }
        None => {
            if !is_loopback_host(host_name(&host)) {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host {:?} is not a loopback name: without --api-token the API \
                         answers only requests addressed to localhost or 127.0.0.1 \
                         (DNS rebinding protection)",
                        super::truncate(&host, 100)
                    ),
                )
                .into_response();
            }
        }
    }
    // Browsers send Origin on cross-origin requests (and on same-origin POSTs): only
    // the API's own origin may drive it. No CORS headers are ever sent.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = format!("http://{host}");
        if !origin.eq_ignore_ascii_case(&own) {
            return ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from origin {:?} are not allowed (only {own})",
                    super::truncate(origin, 100)
                ),
            )
            .into_response();
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return ApiError(
            StatusCode::FORBIDDEN,
            "cross-site requests are not allowed".into(),
        )
        .into_response();
    }
    next.run(req).await
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn ih_of(p: Result<Path<String>, PathRejection>) -> Result<InfoHash, ApiError> {
    let Path(s) = p.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(parse_info_hash(&s)?)
}

fn query_of(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

/// `true`/`false`/`1`/`0`; anything else is an error naming the parameter.
fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(|s| s.as_str()) {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{name}={:?}: expected true or false",
                super::truncate(other, 40)
            ),
        )),
    }
}

/// The magnet link of a listed torrent (info-hash and name).
pub fn magnet_of(s: &Summary) -> String {
    let mut m = Magnet::new(s.info_hash);
    m.display_name = s.name.clone();
    m.to_string()
}

fn state_name(s: TState) -> &'static str {
    match s {
        TState::Starting => "starting",
        TState::Metadata => "metadata",
        TState::Downloading => "downloading",
        TState::Seeding => "seeding",
        TState::Stopping => "stopping",
        TState::Paused => "paused",
        TState::Error => "error",
    }
}

/// A torrent's summary as JSON; `full` adds peers, contributions and files.
pub fn summary_json(s: &Summary, full: bool) -> Value {
    let st = s.stats.clone().unwrap_or_default();
    let total = s
        .meta
        .as_ref()
        .map_or(st.total_length, |m| m.info.total_length);
    let mut v = json!({
        "id": s.id,
        "info_hash": s.info_hash.to_hex(),
        "name": s.name,
        "state": state_name(s.state),
        "error": s.error,
        "progress": s.progress(),
        "have_metadata": st.have_metadata || s.meta.is_some(),
        "total_bytes": total,
        "bytes_left": if st.have_metadata { st.bytes_left } else { total },
        "pieces": st.piece_count,
        "pieces_have": st.pieces_have,
        "downloaded": s.total_down,
        "uploaded": s.total_up,
        "wasted": st.wasted,
        "download_rate": if s.state == TState::Paused { 0.0 } else { st.download_rate },
        "upload_rate": if s.state == TState::Paused { 0.0 } else { st.upload_rate },
        "peers_connected": if s.state == TState::Paused { 0 } else { st.peers.len() },
        "connections": if s.state == TState::Paused { 0 } else { st.connections },
        "hash_failures": st.hash_failures,
        "banned": st.banned,
        "out_dir": s.out_dir.display().to_string(),
        "added": s.added,
        "magnet": magnet_of(s),
    });
    if full {
        let peers: Vec<Value> = if s.state == TState::Paused {
            Vec::new()
        } else {
            st.peers
                .iter()
                .map(|p| {
                    json!({
                        "addr": p.addr.map(|a| a.to_string()),
                        "client": p.client,
                        "downloaded": p.downloaded,
                        "uploaded": p.uploaded,
                        "download_rate": p.download_rate,
                        "upload_rate": p.upload_rate,
                        "is_seed": p.is_seed,
                    })
                })
                .collect()
        };
        let contributions: Vec<Value> = st
            .contributions
            .iter()
            .map(|c| {
                json!({
                    "addr": c.addr.to_string(),
                    "client": c.client,
                    "downloaded": c.downloaded,
                    "uploaded": c.uploaded,
                })
            })
            .collect();
        let files: Vec<Value> = s
            .meta
            .as_ref()
            .map(|m| {
                m.info
                    .files
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.attr.padding)
                    .map(|(i, f)| {
                        json!({
                            "index": i,
                            "path": f.path.join("/"),
                            "length": f.length,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        v["peers"] = Value::Array(peers);
        v["contributions"] = Value::Array(contributions);
        v["files"] = Value::Array(files);
        v["dropped"] = Value::Array(
            st.dropped
                .iter()
                .map(|(a, why)| json!({"addr": a.to_string(), "reason": why}))
                .collect(),
        );
    }
    v
}

async fn list(State(st): State<Arc<AppState>>) -> Response {
    let all: Vec<Value> = st
        .daemon
        .list()
        .iter()
        .map(|s| summary_json(s, false))
        .collect();
    json_response(StatusCode::OK, json!({ "torrents": all }))
}

async fn detail(
    State(st): State<Arc<AppState>>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let ih = ih_of(p)?;
    let s = st.daemon.get(ih)?;
    Ok(json_response(StatusCode::OK, summary_json(&s, true)))
}

/// `POST /api/torrents`: `{"magnet": "...", "dir": "sub/dir", "paused": false}` (JSON),
/// or the bytes of a .torrent file (`?dir=`, `?paused=` in the query).
async fn add(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let q = query_of(q)?;
    let body = body?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let is_json = ctype.starts_with("application/json") || first == Some(b'{');
    let (req, dir, paused) = if body.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "empty body: send {\"magnet\": \"magnet:?...\"} as JSON, or a .torrent file".into(),
        ));
    } else if is_json {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "expected a JSON object like {\"magnet\": \"magnet:?...\"}".into(),
            ));
        };
        let magnet = match obj.get("magnet") {
            Some(Value::String(m)) => m.clone(),
            Some(_) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"magnet\" must be a string".into(),
                ))
            }
            None => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "missing \"magnet\" (or send the .torrent file itself as the body)".into(),
                ))
            }
        };
        let dir = match obj.get("dir") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"dir\" must be a string".into(),
                ))
            }
        };
        let paused = match obj.get("paused") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"paused\" must be true or false".into(),
                ))
            }
        };
        (AddRequest::Magnet(magnet), dir, paused)
    } else {
        let paused = flag(&q, "paused")?;
        (
            AddRequest::Torrent(body.to_vec()),
            q.get("dir").cloned(),
            paused,
        )
    };
    let (ih, id) = st.daemon.add(req, dir.as_deref(), paused).await?;
    let mut r = json_response(
        StatusCode::CREATED,
        json!({ "info_hash": ih.to_hex(), "id": id }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/api/torrents/{}", ih.to_hex())) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn pause(
    State(st): State<Arc<AppState>>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let ih = ih_of(p)?;
    st.daemon.pause(ih).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"info_hash": ih.to_hex(), "state": "paused"}),
    ))
}

async fn resume(
    State(st): State<Arc<AppState>>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let ih = ih_of(p)?;
    st.daemon.resume(ih).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"info_hash": ih.to_hex(), "state": "starting"}),
    ))
}

async fn remove(
    State(st): State<Arc<AppState>>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let ih = ih_of(p)?;
    let q = query_of(q)?;
    let delete_data = flag(&q, "delete_data")?;
    let deleted = st.daemon.remove(ih, delete_data).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"info_hash": ih.to_hex(), "removed": true, "files_deleted": deleted}),
    ))
}

async fn dht(State(st): State<Arc<AppState>>) -> Response {
    let d = st.daemon.dht_summary().await;
    let v = match &d.stats {
        None => json!({"enabled": false}),
        Some(s) => json!({
            "enabled": true,
            "addr": d.addr.map(|a: SocketAddr| a.to_string()),
            "id": hex::encode(s.id.0),
            "nodes": s.nodes4 + s.nodes6,
            "nodes4": s.nodes4,
            "nodes6": s.nodes6,
            "buckets": s.buckets4 + s.buckets6,
            "replacements": s.replacements,
            "lookups_active": s.lookups,
            "torrents_looking_up": d.lookups_running,
            "lookups_done": d.lookups_done,
            "stored_torrents": s.torrents,
            "stored_peers": s.peers,
            "queries_received": s.queries_received,
            "queries_sent": s.queries_sent,
            "responses_received": s.responses_received,
            "timeouts": s.timeouts,
            "external_ip": s.external_ip.map(|ip| ip.to_string()),
        }),
    };
    json_response(StatusCode::OK, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_tokens() {
        assert_eq!(host_name("127.0.0.1:9091"), "127.0.0.1");
        assert_eq!(host_name("[::1]:9091"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.3.4.5"));
        assert!(is_loopback_host("::1"));
        assert!(!is_loopback_host("evil.example"));
        assert!(!is_loopback_host("203.0.113.7"));
        assert!(!is_loopback_host(""));
        let mut h = HeaderMap::new();
        assert_eq!(
            presented_token(&h, Some("a=1&token=s%20x")),
            Some("s x".into())
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_token(&h, None), Some("abc".into()));
        // user:tok
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjp0b2s="),
        );
        assert_eq!(presented_token(&h, None), Some("tok".into()));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
