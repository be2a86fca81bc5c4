//! The daemon side of the control socket. The socket is created with mode 0600 (bound under a
//! temporary name, chmod'ed, then renamed into place, so it is never reachable with a wider
//! mode), and each connection's peer must have the daemon's uid.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{ErrorKind, ErrorReply, Request, Response};
use crate::daemon::shared::Shared;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

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
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the task is dropped.
    pub async fn serve(self, shared: Arc<Shared>) {
        let uid = crate::sys::effective_uid();
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
            tokio::spawn(connection(stream, shared.clone()));
        }
    }

    /// Removes the socket file (on shutdown).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let response = if line.len() > MAX_REQUEST {
            bad_request(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => shared.handle(request).await,
                Err(error) => bad_request(format!(
                    "not a request this daemon knows ({error}); is the CLI newer than the daemon?"
                )),
            }
        };
        let mut text = serde_json::to_string(&response).expect("responses serialize");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn bad_request(message: String) -> Response {
    Response::Error(ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    })
}
