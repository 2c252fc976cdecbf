//! The mock's stateful OpenAI endpoints, for the pass-through tests: `/v1/files` (upload
//! stored byte for byte, `GET /v1/files/{id}/content` gives it back) and `/v1/batches`
//! (create, then `GET /v1/batches/{id}`). Every answer echoes the `authorization` it got.

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::mock::{write_json, Recorded};

/// Whether `path` is one of these endpoints.
pub fn owns(path: &str) -> bool {
    path.starts_with("/v1/files") || path.starts_with("/v1/batches")
}

pub async fn answer(
    sock: &mut TcpStream,
    req: &Recorded,
    stored: &Mutex<Vec<(String, Vec<u8>)>>,
) -> bool {
    let auth = req.header("authorization").unwrap_or("").to_string();
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let found = |id: &str| {
        stored
            .lock()
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, b)| b.clone())
    };
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", kind @ ("files" | "batches")]) => {
            let id = {
                let mut s = stored.lock();
                let prefix = if *kind == "files" { "file" } else { "batch" };
                let id = format!("{prefix}-{}", s.len() + 1);
                s.push((id.clone(), req.body.clone()));
                id
            };
            let body =
                json!({"id": id, "object": kind, "bytes": req.body.len(), "authorization": auth});
            json_body(sock, 200, &body).await
        }
        ("GET", ["v1", "files", id, "content"]) => match found(id) {
            Some(bytes) => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n", bytes.len());
                sock.write_all(head.as_bytes()).await.is_ok()
                    && sock.write_all(&bytes).await.is_ok()
            }
            None => json_body(sock, 404, &json!({"error": {"message": "no such file"}})).await,
        },
        ("GET", ["v1", "batches", id]) => match found(id) {
            Some(bytes) => {
                let asked: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let body = json!({"id": id, "object": "batch", "status": "completed",
                    "input_file_id": asked["input_file_id"], "authorization": auth});
                json_body(sock, 200, &body).await
            }
            None => json_body(sock, 404, &json!({"error": {"message": "no such batch"}})).await,
        },
        _ => json_body(sock, 404, &json!({"error": {"message": "unknown"}})).await,
    }
}

async fn json_body(sock: &mut TcpStream, status: u16, v: &Value) -> bool {
    write_json(sock, status, "", v.to_string().as_bytes()).await
}
