//! The etcd client: one connection per session, built from `[fleet]` (endpoints, TLS files,
//! credentials), with short timeouts so an unreachable store is noticed in seconds.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::FleetError;
use crate::config::fleet::Fleet as FleetConfig;

/// A request to etcd that takes longer than this fails (the host goes fail-static).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// gRPC keep-alive: a dead connection is noticed within interval + timeout.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(2));

/// Connects to the fleet's etcd (the TLS files are read now, so a rotated certificate is
/// picked up at the next reconnection).
pub async fn connect(config: &FleetConfig) -> Result<Client, FleetError> {
    let mut options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| FleetError::TlsFile {
                path: path.to_owned(),
                source,
            })
        };
        let mut tls_options = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            tls_options = tls_options.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &tls.identity {
            tls_options = tls_options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls_options);
    }
    let mut client = Client::connect(&config.etcd, Some(options))
        .await
        .map_err(FleetError::store("connecting"))?;
    // The channel connects lazily: one round trip proves the store answers.
    client
        .status()
        .await
        .map_err(FleetError::store("reaching"))?;
    Ok(client)
}

/// A stored JSON value, or [`FleetError::BadValue`] naming its key.
pub fn decode<T: serde::de::DeserializeOwned>(kv: &etcd_client::KeyValue) -> Result<T, FleetError> {
    serde_json::from_slice(kv.value()).map_err(|error| FleetError::BadValue {
        key: kv.key_str().unwrap_or_default().to_owned(),
        problem: error.to_string(),
    })
}

/// Every JSON value under `prefix` (`what` names them in the error).
pub async fn read_prefix<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    prefix: String,
    what: &'static str,
) -> Result<Vec<T>, FleetError> {
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::store(what))?;
    response.kvs().iter().map(decode).collect()
}
