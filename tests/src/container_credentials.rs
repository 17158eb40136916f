//! A container credentials endpoint: the HTTP source of AWS credentials that
//! ECS, and the AWS SDKs' default chain, read from
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`. Every request is answered with a new
//! access key id (`ASIATEST000001`, `ASIATEST000002`, …), so a test can tell
//! how often a function fetched its credentials and which keys it was given:
//! an RDS IAM token names its key in `X-Amz-Credential`, so two tokens signed
//! with different keys differ.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// The running endpoint; it stops when dropped.
#[derive(Debug)]
pub struct ContainerCredentials {
    port: u16,
    served: Arc<Mutex<Vec<String>>>,
    server: JoinHandle<()>,
}

impl ContainerCredentials {
    /// Starts the endpoint on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the credentials endpoint");
        let port = listener.local_addr().expect("local address").port();
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&served);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = service_fn(move |_: Request<Incoming>| {
                        let key = {
                            let mut served = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let key = format!("ASIATEST{:06}", served.len() + 1);
                            served.push(key.clone());
                            key
                        };
                        let body = serde_json::json!({
                            "AccessKeyId": key,
                            "SecretAccessKey": format!("secret-of-{key}"),
                            "Token": format!("session-token-of-{key}"),
                            "Expiration": "2099-01-01T00:00:00Z",
                        });
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string())))) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { port, served, server }
    }

    /// The environment that makes the SDK's default chain read credentials
    /// here.
    #[must_use]
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(), format!("http://127.0.0.1:{}/credentials", self.port))]
    }

    /// The access key ids handed out so far, in order.
    #[must_use]
    pub fn served(&self) -> Vec<String> {
        self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for ContainerCredentials {
    fn drop(&mut self) {
        self.server.abort();
    }
}
