//! The CLI side of the control socket: blocking, one request at a time. Before it sends
//! anything it checks who answers: the process at the other end (`SO_PEERCRED`) must be root
//! or the CLI's own user, so a socket swapped in by another user gets nothing, not even the
//! request, and its answer is never printed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{ErrorReply, Reply, Request, Response};

/// How long the CLI waits for an answer (a reload attaches interfaces; status scans flows).
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the splitter daemon is not running (nothing listens on {path}: {source}); start it with `splitter daemon --config FILE`, or pass --socket"
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {path}: the control socket is root-only (mode 0600); run as root"
    )]
    PermissionDenied { path: PathBuf },
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon on {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error(
        "the daemon on {path} sent an answer this CLI does not understand ({source}); are the CLI and daemon the same version?"
    )]
    Protocol {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the process answering on {path} runs as uid {uid}, not root or this user (uid {me}): not the splitter daemon; nothing was sent (check who can write to {dir})"
    )]
    UntrustedPeer {
        path: PathBuf,
        uid: u32,
        me: u32,
        dir: String,
    },
    #[error("{0}")]
    Daemon(ErrorReply),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_owned(),
            },
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning {
                    path: path.to_owned(),
                    source,
                }
            }
            _ => ClientError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        let io_error = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        let uid = crate::sys::peer_uid(stream.as_fd()).map_err(io_error)?;
        let me = crate::sys::effective_uid();
        if uid != 0 && uid != me {
            return Err(ClientError::UntrustedPeer {
                path: path.to_owned(),
                uid,
                me,
                dir: path
                    .parent()
                    .map_or_else(|| "/".to_owned(), |dir| dir.display().to_string()),
            });
        }
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io_error)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io_error)?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let io_error = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(request).expect("requests serialize");
        line.push('\n');
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(io_error)?;
        let mut answer = String::new();
        let read = self
            .reader
            .read_line(&mut answer)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        match serde_json::from_str(&answer).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })? {
            Response::Ok(reply) => Ok(reply),
            Response::Error(error) => Err(ClientError::Daemon(error)),
        }
    }
}
