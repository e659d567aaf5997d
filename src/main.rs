//! The `sipedge` binary: see [`sipedge::cli`].
fn main() -> std::process::ExitCode {
    match sipedge::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipedge: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
