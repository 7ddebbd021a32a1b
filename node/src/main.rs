fn main() -> std::process::ExitCode {
    node::cli_main()
}
