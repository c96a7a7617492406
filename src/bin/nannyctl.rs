//! `nannyctl`: see `portnanny::nannyctl` (the code lives in the library so its tests and the
//! end-to-end tests share it).

fn main() -> std::process::ExitCode {
    portnanny::nannyctl::main()
}
