//! `berth-monitor`: the per-pod monitor of berth (`serve <pod-dir>`) and the pause process
//! of pods with a shared PID namespace (`pause`). See the `berth_monitor` library.

fn main() {
    std::process::exit(berth_monitor::server::main());
}
