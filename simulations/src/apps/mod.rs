//! Apps the simulator can run besides the real cores: a protocol-free probe used to test
//! the engine itself and to measure its raw event throughput.

pub mod probe;
