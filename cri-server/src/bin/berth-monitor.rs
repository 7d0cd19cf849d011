//! `berth-monitor`: the per-pod monitor of berth (`serve <pod-dir>`) and the pause process
//! of pods with a shared PID namespace (`pause`). See `runtime_core::monitor`.

fn main() {
    std::process::exit(runtime_core::monitor::server::main());
}
