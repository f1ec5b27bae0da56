//! sluice binary: parse settings, set up logging and the allocator, and hand
//! over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread exists: bound glibc arenas so RSS returns after sessions end.
    sluice::memory::limit_arenas();
    let settings = sluice::config::Settings::parse();
    sluice::init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice::run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
