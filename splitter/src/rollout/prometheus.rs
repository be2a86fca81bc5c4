//! External checks: one PromQL instant query over HTTP (`GET /api/v1/query`), its value
//! compared with the check's bound. A tiny HTTP/1.1 client: one request per connection,
//! bounded in time.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    engine::Checks,
    plan::{Check, CheckBound},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Evaluates every check: the first out-of-bounds value fails, the first unreadable holds.
pub async fn evaluate(checks: &[Check]) -> Checks {
    for check in checks {
        match query(check).await {
            Ok(value) => {
                let ok = match check.bound {
                    CheckBound::Max(max) => value <= max,
                    CheckBound::Min(min) => value >= min,
                };
                if !ok {
                    return Checks::Fail(format!(
                        "check `{}` = {value} is out of bounds {:?}",
                        check.query, check.bound
                    ));
                }
            }
            Err(error) => return Checks::Unknown(format!("check `{}`: {error}", check.query)),
        }
    }
    Checks::Pass
}

/// The query's value: a scalar, or a vector with exactly one sample.
pub async fn query(check: &Check) -> Result<f64, String> {
    let rest = check
        .prometheus
        .strip_prefix("http://")
        .ok_or("only http:// is supported")?;
    let (host, base) = rest.split_once('/').unwrap_or((rest, ""));
    let path = format!(
        "/{}{}api/v1/query?query={}",
        base,
        if base.is_empty() || base.ends_with('/') {
            ""
        } else {
            "/"
        },
        encode(&check.query)
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let body = tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    })
    .await
    .map_err(|_| format!("no answer from {} within {TIMEOUT:?}", check.prometheus))??;
    let text = String::from_utf8_lossy(&body);
    let (head, json) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("HTTP {}", head.lines().next().unwrap_or_default()));
    }
    value_of(json)
}

/// Extracts the value of an instant-query response.
pub fn value_of(json: &str) -> Result<f64, String> {
    let response: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let data = &response["data"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => &data["result"][1],
        Some("vector") => {
            let samples = data["result"].as_array().ok_or("no result")?;
            match samples.as_slice() {
                [sample] => &sample["value"][1],
                [] => return Err("the query returned no sample".into()),
                _ => {
                    return Err(format!(
                        "the query returned {} samples, want 1",
                        samples.len()
                    ));
                }
            }
        }
        other => return Err(format!("unsupported result type {other:?}")),
    };
    value
        .as_str()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|e| format!("bad value: {e}"))
}

fn encode(query: &str) -> String {
    let mut out = String::new();
    for byte in query.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_query_values() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"0.25"]}]}}"#;
        assert_eq!(value_of(vector), Ok(0.25));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}}"#;
        assert_eq!(value_of(scalar), Ok(3.0));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(value_of(empty).is_err());
    }
}
