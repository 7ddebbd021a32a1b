//! The `swarm` binary, built in this package so integration tests can spawn it.
fn main() -> std::process::ExitCode {
    node::cli_main()
}
