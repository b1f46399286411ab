//! The control plane: the versioned line-delimited JSON protocol ([`protocol`]), the per-mount
//! Unix socket server that `lossctl` talks to ([`server`]) and the client it uses
//! ([`client`]).  The daemon plugs its operations in through [`ControlHandler`].

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{call, ClientError};
pub use protocol::{
    default_socket_path, parse_request, systemd_escape_path, Request, MAX_LINE, PROTOCOL_VERSION,
    SOCKET_DIR,
};
pub use server::{ControlServer, ServerOptions};

use crate::error::{FsError, FsResult};
use crate::faultspec::FaultCommand;
use crate::report::{FaultsStatus, PowercutReport, StatusReport, SyncReport};

/// What the daemon does for each control request.  Calls are serialized by the server: at
/// most one runs at a time, whatever the number of clients.  An `Err` is logged with its
/// errno and sent to the client as the error message, so it should name what failed.
pub trait ControlHandler: Send + Sync + 'static {
    fn status(&self) -> FsResult<StatusReport>;
    fn sync(&self) -> FsResult<SyncReport>;
    fn powercut(&self, no_kill: bool) -> FsResult<PowercutReport>;
    /// A power cut that keeps part of the unsynced data (`lossctl powercut --keep`).
    /// Handlers that only know plain cuts refuse anything else.
    fn powercut_keep(
        &self,
        no_kill: bool,
        keep: crate::keep::KeepRequest,
    ) -> FsResult<PowercutReport> {
        if keep.is_default() {
            self.powercut(no_kill)
        } else {
            Err(FsError::msg(
                libc::EOPNOTSUPP,
                format!("this server cannot keep {} at a power cut", keep.mode),
            ))
        }
    }

    /// Crash points, fault rules and disk-full mode; answers the engine's state after.
    fn faults(&self, cmd: FaultCommand) -> FsResult<FaultsStatus> {
        let _ = cmd;
        Err(FsError::new(
            libc::EOPNOTSUPP,
            "this lossfs does not inject faults",
        ))
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
