//! Placeholder while the plugin is written.

use wasmgate_sdk::prelude::*;

struct Skeleton;

impl Plugin for Skeleton {
    type Config = NoConfig;

    fn new(_config: NoConfig) -> Result<Self, ConfigError> {
        Ok(Self)
    }
}

wasmgate_sdk::export!(Skeleton);
