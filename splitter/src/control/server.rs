//! The daemon side of the control socket. The socket is created with mode 0600 (bound under a
//! temporary name, chmod'ed, then renamed into place, so it is never reachable with a wider
//! mode), and each connection's peer must have the daemon's uid.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

use super::protocol::{ErrorKind, ErrorReply, Request, Response};

/// Longest request line accepted; a longer one is answered with an error and the connection
/// is closed (the codec stops buffering at this length).
const MAX_REQUEST: usize = 64 * 1024;

/// What answers the requests (the daemon's application). The server knows the protocol and
/// the socket, nothing of what is behind it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another daemon is answering on it")]
    InUse { path: PathBuf },
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's owner: this process's effective uid (it created the file).
    owner: u32,
}

impl ControlServer {
    /// Binds the socket (inside a tokio runtime). A stale socket file of a dead daemon is
    /// replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let io_error = |source| ServerError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse {
                path: path.to_owned(),
            });
        }
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(io_error)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|source| {
                let _ = std::fs::remove_file(&temp);
                io_error(source)
            })?;
        let owner = std::fs::metadata(path).map_err(io_error)?.uid();
        Ok(Self {
            listener,
            path: path.to_owned(),
            owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the task is dropped.
    pub async fn serve<H: Handler>(self, handler: Arc<H>) {
        let uid = self.owner;
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a control connection");
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == uid || peer.uid() == 0 => {}
                Ok(peer) => {
                    tracing::warn!(
                        uid = peer.uid(),
                        "control connection from another user refused"
                    );
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "control connection without credentials refused");
                    continue;
                }
            }
            tokio::spawn(connection(stream, handler.clone()));
        }
    }

    /// Removes the socket file (on shutdown).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST));
    while let Some(line) = lines.next().await {
        let response = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => handler.handle(request).await,
                Err(error) => bad_request(format!(
                    "not a request this daemon knows ({error}); is the CLI newer than the daemon?"
                )),
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let _ = lines
                    .send(response_line(&bad_request(format!(
                        "request longer than {MAX_REQUEST} bytes"
                    ))))
                    .await;
                return;
            }
            Err(LinesCodecError::Io(_)) => return,
        };
        if lines.send(response_line(&response)).await.is_err() {
            return;
        }
    }
}

fn response_line(response: &Response) -> String {
    serde_json::to_string(response).expect("responses serialize")
}

fn bad_request(message: String) -> Response {
    Response::Error(ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    })
}
