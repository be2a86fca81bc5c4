//! The daemon side of the control socket. The socket's directory must be the daemon's own
//! (owned by its user or root, not writable by group or others); the socket is bound under a
//! temporary name with umask 0177 (so it is created mode 0600, never reachable with a wider
//! mode), then renamed into place; each connection's peer must have the daemon's uid or be
//! root. Connections are capped (the oldest is closed at the cap), every read and write has a
//! timeout, and a request line longer than [`MAX_REQUEST`] closes the connection.

use std::{
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

use super::{
    limits::{AcceptBackoff, ConnectionSlots, RateLimit},
    protocol::{ErrorKind, ErrorReply, Request, Response},
};

/// Longest request line accepted; a longer one is answered with an error and the connection
/// is closed (the codec stops buffering at this length).
pub const MAX_REQUEST: usize = 64 * 1024;

/// How many connections and how long each may sit idle (or take to read or write a line).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
}

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
    #[error("control socket directory: {0}")]
    Directory(#[from] crate::state::StateError),
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
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error)?;
            crate::state::check_private_dir("the control socket's directory", parent)?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse {
                path: path.to_owned(),
            });
        }
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        // Created mode 0600 by the kernel itself: no window with a wider mode, no chmod.
        let previous = crate::sys::set_umask(0o177);
        let bound = UnixListener::bind(&temp);
        crate::sys::set_umask(previous);
        let listener = bound.map_err(io_error)?;
        std::fs::rename(&temp, path).map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            io_error(source)
        })?;
        let owner = std::fs::symlink_metadata(path).map_err(io_error)?.uid();
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
    pub async fn serve<H: Handler>(self, handler: Arc<H>, limits: Limits) {
        const WHAT: &str = "control";
        let uid = self.owner;
        let slots = ConnectionSlots::new(WHAT, limits.max_connections);
        let mut backoff = AcceptBackoff::default();
        let mut refused_log = RateLimit::default();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => {
                    backoff.success(WHAT);
                    stream
                }
                Err(error) => {
                    backoff.failure(WHAT, &error).await;
                    continue;
                }
            };
            let refused = match crate::sys::peer_uid(stream.as_fd()) {
                Ok(peer) if peer == uid || peer == 0 => None,
                Ok(peer) => Some(format!("uid {peer}")),
                Err(error) => Some(format!("no credentials: {error}")),
            };
            if let Some(peer) = refused {
                if let Some(suppressed) = refused_log.allow() {
                    tracing::warn!(%peer, suppressed, "control connection from another user refused");
                }
                continue;
            }
            slots.spawn(connection(stream, handler.clone(), limits.timeout));
        }
    }

    /// Removes the socket file (on shutdown).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>, timeout: Duration) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST));
    // Idle (or a line trickling in) longer than `timeout`: closed.
    while let Ok(Some(line)) = tokio::time::timeout(timeout, lines.next()).await {
        let response = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => handler.handle(request).await,
                Err(error) => bad_request(format!(
                    "not a request this daemon knows ({error}); is the CLI newer than the daemon?"
                )),
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let _ = tokio::time::timeout(
                    timeout,
                    lines.send(response_line(&bad_request(format!(
                        "request longer than {MAX_REQUEST} bytes; connection closed"
                    )))),
                )
                .await;
                return;
            }
            Err(LinesCodecError::Io(_)) => return,
        };
        // A client that does not read its answers is dropped after `timeout`.
        if !matches!(
            tokio::time::timeout(timeout, lines.send(response_line(&response))).await,
            Ok(Ok(()))
        ) {
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
