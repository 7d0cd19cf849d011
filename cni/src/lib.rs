//! CNI support for berth: conflist loading, plugin execution, the result cache and netns
//! helpers. Pod networking lands with the CNI issue; until then pods get a netns with only
//! `lo` and the runtime reports NetworkReady false.
