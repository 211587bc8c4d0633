//! The shared helpers these tests use (from `tracknet-testkit`).

pub use tracknet_testkit::{TempDir, write_jpeg};
