//! The `faas-watchdog` binary: an OpenFaaS-compatible watchdog configured by environment
//! variables (see `faas_watchdog::watchdog`).

fn main() -> std::process::ExitCode {
    faas_watchdog::watchdog::main_from_env()
}
