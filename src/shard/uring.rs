//! The io_uring driver (being written; until it lands, `probe` refuses and
//! `--io auto` falls back to mio).

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;

use crate::proxy::Service;

use super::DriverStats;

/// Checks that the kernel offers what the driver needs.
pub fn probe() -> Result<(), String> {
    Err("the io_uring driver is not in this build yet".to_owned())
}

/// The io_uring driver of one shard.
pub struct UringDriver;

impl UringDriver {
    /// A driver over `sockets`.
    pub fn new(_sockets: Vec<UdpSocket>) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring driver not built"))
    }

    /// Runs the shard loop until `stop` is set.
    pub fn run<S: Service>(&mut self, _service: &mut S, _stop: &AtomicBool) -> io::Result<DriverStats> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring driver not built"))
    }
}
