//! How much work a run does: the sizes of the full run, `--quick` and `--quick --smoke`.

/// The size of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole workload of issue 5 (under 20 minutes on the 2-core CI machine).
    Full,
    /// Smaller figures of everything (under 3 minutes).
    Quick,
    /// The minimum that proves the tool works end to end (CI); its figures mean nothing.
    Smoke,
}

impl Mode {
    /// Lower-case name, as printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
            Mode::Smoke => "smoke",
        }
    }
}

/// Sizes of every workload of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which preset this is.
    pub mode: Mode,
    /// Layers of the cold-pull image (at least 5).
    pub pull_layers: usize,
    /// Uncompressed bytes per layer of the cold-pull image (about half of it compresses).
    pub pull_layer_bytes: usize,
    /// Cold pulls per runtime.
    pub pull_runs: usize,
    /// Pods started (and then torn down) one after the other, per runtime.
    pub sequential_pods: usize,
    /// Pods started at once in the parallel workload.
    pub parallelism: usize,
    /// Pods running during the list / status calls and the last memory sample; started in
    /// batches of `parallelism`, so a multiple of it.
    pub running_pods: usize,
    /// Rounds of the list / status calls (each round makes every call once), per runtime.
    pub list_rounds: usize,
    /// `--scale N`: also start N pods per runtime and report each decade (step 10).
    pub scale_pods: Option<usize>,
}

impl Plan {
    /// The preset for `mode`.
    pub fn for_mode(mode: Mode) -> Plan {
        match mode {
            // ~100 MB compressed, N=50, 100 pods: about 2-3 minutes here.
            Mode::Full => Plan {
                mode,
                pull_layers: 5,
                pull_layer_bytes: 38 << 20,
                pull_runs: 7,
                sequential_pods: 50,
                parallelism: 10,
                running_pods: 100,
                list_rounds: 100,
                scale_pods: None,
            },
            // ~30 MB compressed, N=20, 30 pods: about 30-40 seconds here.
            Mode::Quick => Plan {
                mode,
                pull_layers: 5,
                pull_layer_bytes: 12 << 20,
                pull_runs: 3,
                sequential_pods: 20,
                parallelism: 10,
                running_pods: 30,
                list_rounds: 30,
                scale_pods: None,
            },
            // Every workload once or twice: proves the tool works, measures nothing.
            Mode::Smoke => Plan {
                mode,
                pull_layers: 5,
                pull_layer_bytes: 256 << 10,
                pull_runs: 1,
                sequential_pods: 2,
                parallelism: 2,
                running_pods: 4,
                list_rounds: 3,
                scale_pods: None,
            },
        }
    }

    /// Parallel batches needed to reach `running_pods`.
    pub fn batches(&self) -> usize {
        self.running_pods.div_ceil(self.parallelism.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for mode in [Mode::Full, Mode::Quick, Mode::Smoke] {
            let p = Plan::for_mode(mode);
            assert!(p.pull_layers >= 5, "{mode:?}: at least 5 layers");
            assert_eq!(p.running_pods % p.parallelism, 0, "{mode:?}: whole batches");
            assert!(p.running_pods >= p.parallelism);
            assert!(p.sequential_pods >= 1 && p.pull_runs >= 1 && p.list_rounds >= 1);
        }
        let full = Plan::for_mode(Mode::Full);
        assert_eq!(full.sequential_pods, 50);
        assert_eq!(full.parallelism, 10);
        assert_eq!(full.running_pods, 100);
        assert_eq!(full.batches(), 10);
    }
}
