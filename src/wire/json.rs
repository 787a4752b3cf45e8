//! Control responses as JSON events: the API's event stream and the CLI's
//! `--format json` both say what happened this way, an event's name and
//! its data on one line.

use serde_json::json;

use super::Response;

/// An event's name and JSON data, if it is one a stream carries.
pub fn event(resp: &Response) -> Option<(&'static str, String)> {
    let data = match resp {
        Response::Submitted(s) => ("submitted", serde_json::to_string(s)),
        Response::Orchestrated(p) => ("orchestrated", serde_json::to_string(p)),
        Response::NodeDone(p) => ("part", serde_json::to_string(p)),
        Response::JobDone(j) => ("job", serde_json::to_string(j)),
        Response::ParentDone { parent_id, jobs } => (
            "run",
            serde_json::to_string(&json!({ "parent_id": parent_id, "jobs": jobs })),
        ),
        Response::NodeChanged { node, state } => (
            "node",
            serde_json::to_string(&json!({ "node": node, "state": state })),
        ),
        Response::Output {
            job_id,
            node,
            stream,
            data,
            dropped,
        } => (
            "output",
            serde_json::to_string(&json!({
                "job_id": job_id,
                "node": node,
                "stream": stream,
                "text": String::from_utf8_lossy(data),
                "dropped": dropped,
            })),
        ),
        Response::Withheld { parts, jobs } => (
            "withheld",
            serde_json::to_string(&json!({ "parts": parts, "jobs": jobs })),
        ),
        _ => return None,
    };
    match data {
        (name, Ok(text)) => Some((name, text)),
        (_, Err(e)) => {
            log::warn!("an event would not encode as JSON: {e}");
            None
        }
    }
}

/// One line of `--format json`: `{"event": NAME, "data": DATA}`.
pub fn line(resp: &Response) -> Option<String> {
    let (name, data) = event(resp)?;
    Some(format!("{{\"event\":\"{name}\",\"data\":{data}}}\n"))
}
