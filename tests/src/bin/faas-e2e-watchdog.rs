//! The faas-rs watchdog, as a binary of the e2e package (the process backend's watchdog
//! command in these tests).

fn main() -> std::process::ExitCode {
    faas_watchdog::watchdog::main_from_env()
}
