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

use crate::faults::spec::FaultCommand;
use crate::report::{FaultsStatus, PowercutReport, StatusReport, SyncReport};

/// What the daemon does for each control request.  Calls are serialized by the server: at
/// most one runs at a time, whatever the number of clients.  An `Err` is sent to the client
/// verbatim as the error message, so it should name what failed.
pub trait ControlHandler: Send + Sync + 'static {
    fn status(&self) -> Result<StatusReport, String>;
    fn sync(&self) -> Result<SyncReport, String>;
    fn powercut(&self, no_kill: bool) -> Result<PowercutReport, String>;
    /// A power cut that keeps part of the unsynced data (`lossctl powercut --keep`).
    /// Handlers that only know plain cuts refuse anything else.
    fn powercut_keep(
        &self,
        no_kill: bool,
        keep: crate::keep::KeepRequest,
    ) -> Result<PowercutReport, String> {
        if keep.is_default() {
            self.powercut(no_kill)
        } else {
            Err(format!(
                "this server cannot keep {} at a power cut",
                keep.mode
            ))
        }
    }

    /// Crash points, fault rules and disk-full mode; answers the engine's state after.
    fn faults(&self, cmd: FaultCommand) -> Result<FaultsStatus, String> {
        let _ = cmd;
        Err("this lossfs does not inject faults".into())
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
