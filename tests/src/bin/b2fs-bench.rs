//! `b2fs-bench`: runs benchmark scenarios against the B2 emulator with injected latency and prints Markdown
//! tables and JSON. See `b2fs-bench --help` and [`b2fs_tests::bench`].

fn main() -> std::process::ExitCode {
    b2fs_tests::bench::main()
}
