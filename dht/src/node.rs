//! The tokio driver: owns the UDP socket, runs the core, exposes an async handle.

/// Placeholder until the driver lands.
pub struct Node;
/// Placeholder until the driver lands.
pub struct NodeConfig;
