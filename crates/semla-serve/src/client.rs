//! A minimal HTTP/1 client over hyper (one connection per request, plain TCP):
//! what the tests and the `semla bench serve` load generator talk to a server
//! with, without pulling in a TLS stack.

use std::net::SocketAddr;

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A response: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// Sends `method path` with `headers` and `body` to `addr`, reads the reply.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Reply, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError(format!("connecting to {addr}: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError(format!("HTTP handshake with {addr}: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError(format!("building the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError(format!("{method} {path}: {e}")))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError(format!("reading the body of {method} {path}: {e}")))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
    send(addr, "GET", path, &[], Vec::new()).await
}

/// A `multipart/form-data` body with an `image` file and, if given, a
/// `params` JSON field; returns the content type and the body.
pub fn multipart(image: &[u8], params: Option<&serde_json::Value>) -> (String, Vec<u8>) {
    let boundary = "semla-boundary-7d1f0c9a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(image);
    body.extend_from_slice(b"\r\n");
    if let Some(params) = params {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\nContent-Type: application/json\r\n\r\n{params}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
