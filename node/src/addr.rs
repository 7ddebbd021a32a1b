//! Parsing of `HOST:PORT` arguments (bootstrap nodes, peers) with name resolution.

use std::net::{IpAddr, SocketAddr};

/// The longest a name lookup may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves `HOST:PORT` (a literal address, `[v6]:port`, or a DNS name) to addresses.
/// A name that does not resolve is an error naming it.
pub async fn resolve(spec: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{spec:?} is not HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        anyhow::bail!("{spec:?} is not HOST:PORT");
    }
    // A resolver that does not answer must not hold up the start (nor a retry) for long.
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(spec))
        .await
        .map_err(|_| anyhow::anyhow!("cannot resolve {spec}: no answer in {RESOLVE_TIMEOUT:?}"))?;
    let addrs: Vec<SocketAddr> = lookup
        .map_err(|e| anyhow::anyhow!("cannot resolve {spec}: {e}"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("{spec} resolves to no address");
    }
    Ok(addrs)
}

/// Resolves every spec; names that fail are logged and skipped (one dead router must not
/// stop the node), but if none resolves the error of the first is returned.
pub async fn resolve_all(specs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    let mut first_err = None;
    for s in specs {
        match resolve(s).await {
            Ok(a) => out.extend(a),
            Err(e) => {
                tracing::warn!("{e:#}");
                first_err.get_or_insert(e);
            }
        }
    }
    match (out.is_empty(), first_err) {
        (true, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

/// Whether `ip` is loopback or private (RFC 1918, ULA): private mode by default there.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_errors() {
        assert_eq!(
            resolve("127.0.0.1:6881").await.unwrap(),
            vec!["127.0.0.1:6881".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1]:80").await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert!(resolve("nonsense").await.is_err());
        assert!(resolve("host:notaport").await.is_err());
        assert!(resolve(":80").await.is_err());
    }
}
