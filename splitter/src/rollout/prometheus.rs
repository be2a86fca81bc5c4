//! External checks: one PromQL instant query over HTTP or HTTPS (`GET /api/v1/query`), its
//! value compared with the check's bound. The HTTP client is ureq (rustls for https), run on
//! tokio's blocking pool, bounded in time.

use std::time::Duration;

use super::{
    engine::Checks,
    plan::{Check, CheckBound},
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read: an instant query for one sample is a few hundred bytes.
const MAX_BODY: u64 = 1 << 20;

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
    let check = check.clone();
    tokio::task::spawn_blocking(move || query_blocking(&check))
        .await
        .map_err(|error| format!("query task failed: {error}"))?
}

fn query_blocking(check: &Check) -> Result<f64, String> {
    let url = format!("{}/api/v1/query", check.prometheus.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .query("query", &check.query)
        .call()
        .map_err(|error| match error {
            ureq::Error::StatusCode(code) => format!("HTTP {code} from {}", check.prometheus),
            ureq::Error::Timeout(_) => {
                format!("no answer from {} within {TIMEOUT:?}", check.prometheus)
            }
            error => format!("{}: {error}", check.prometheus),
        })?;
    let json = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|error| format!("reading the answer of {}: {error}", check.prometheus))?;
    value_of(&json)
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

    /// A real HTTP exchange on loopback with a chunked answer, as Prometheus sends when it
    /// streams (the hand-written client this replaced read it as a broken body).
    #[test]
    fn chunked_answer_from_a_server() {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let body =
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"0.5"]}}"#;
            let (first, rest) = body.split_at(20);
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                first.len(),
                rest.len()
            )
            .unwrap();
            request_line
        });
        let check = Check {
            prometheus: format!("http://{address}/"),
            query: "sum(rate(x[1m])) / 2".into(),
            bound: CheckBound::Max(1.0),
        };
        assert_eq!(query_blocking(&check), Ok(0.5));
        let request_line = server.join().unwrap();
        assert!(
            request_line
                .starts_with("GET /api/v1/query?query=sum(rate(x%5B1m%5D))%20%2F%202 HTTP/1.1"),
            "{request_line}"
        );
    }
}
