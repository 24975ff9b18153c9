fn main() -> std::process::ExitCode {
    wasmgate::main()
}
