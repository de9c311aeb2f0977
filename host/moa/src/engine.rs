//! The wasmtime engine moa runs components on: pooling allocator, copy-on-write memory images,
//! epoch interruption driven by one ticker thread per engine, and an on-disk compile cache.

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; request deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings (from the runtime config's `[engine]` table).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How many component instances may be alive at once (pool slots).
    pub max_instances: u32,
    /// The largest linear memory any instance may grow to, in MiB (per-component limits are lower).
    pub max_memory_mb: u64,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each linear memory, table and async stack that stay resident when an instance
    /// ends (reset with `memset` instead of `madvise`): avoids a page fault per touched page and a
    /// TLB shootdown per instance, at the cost of keeping that much memory per warm slot.
    pub keep_resident_bytes: usize,
    /// How many slot decommits are batched into one `madvise` round.
    pub decommit_batch_size: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1000,
            max_memory_mb: 1024,
            cache_dir: default_cache_dir(),
            keep_resident_bytes: 8 << 20,
            decommit_batch_size: 1,
        }
    }
}

/// `$MOA_CACHE_DIR`, else `$XDG_CACHE_HOME/moa/components`, else `~/.cache/moa/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MOA_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("moa").join("components"))
}

/// Where a component came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOrigin {
    Compiled,
    Cache,
}

impl LoadOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadOrigin::Compiled => "compiled",
            LoadOrigin::Cache => "cache",
        }
    }
}

/// A wasmtime engine plus its epoch ticker and compile cache.
pub struct MoaEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    settings_key: String,
    _ticker: EpochTicker,
}

impl MoaEngine {
    pub fn new(settings: &EngineSettings) -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.wasm_component_model_async(true);
        config.epoch_interruption(true);
        config.memory_init_cow(true);

        let mut pooling = PoolingAllocationConfig::default();
        let max_memory_bytes = usize::try_from(settings.max_memory_mb)
            .ok()
            .and_then(|mb| mb.checked_mul(1 << 20))
            .context("engine.max_memory_mb is too large")?;
        pooling
            .total_component_instances(settings.max_instances)
            .total_core_instances(settings.max_instances.saturating_mul(4))
            .total_memories(settings.max_instances.saturating_mul(2))
            .total_tables(settings.max_instances.saturating_mul(4))
            .total_stacks(settings.max_instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .table_elements(1 << 16)
            .max_memory_size(max_memory_bytes)
            .linear_memory_keep_resident(settings.keep_resident_bytes)
            .table_keep_resident(settings.keep_resident_bytes)
            .async_stack_keep_resident(settings.keep_resident_bytes)
            .decommit_batch_size(settings.decommit_batch_size.max(1))
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("failed to create the wasmtime engine (pooling allocator settings may exceed this machine's address space: lower engine.max_instances)")?;
        let settings_key = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let ticker = EpochTicker::spawn(engine.clone(), EPOCH_TICK);
        Ok(MoaEngine {
            engine,
            cache_dir: settings.cache_dir.clone(),
            settings_key,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Number of epoch ticks covering `deadline` (at least one).
    pub fn ticks_for(deadline: Duration) -> u64 {
        let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Loads the component at `path`, from the compile cache when this exact wasm was compiled
    /// before with the same engine settings, else by compiling it (and filling the cache).
    pub fn load_component(&self, path: &Path) -> Result<(Component, LoadOrigin)> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read component {}: build it first (`moa build`) or fix `source` in spin.toml",
                path.display()
            )
        })?;
        let Some(cache_dir) = &self.cache_dir else {
            return Ok((self.compile(path, &bytes)?, LoadOrigin::Compiled));
        };
        let digest = hex::encode(Sha256::digest(&bytes));
        let cached = cache_dir.join(format!("{digest}-{}.cwasm", self.settings_key));
        if cached.exists() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash, into moa's own cache directory; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok((component, LoadOrigin::Cache)),
                Err(err) => {
                    tracing::warn!(path = %cached.display(), error = %err, "ignoring unusable compile cache entry")
                }
            }
        }
        let component = self.compile(path, &bytes)?;
        if let Err(err) = write_cache_entry(&component, cache_dir, &cached) {
            tracing::warn!(dir = %cache_dir.display(), error = %err, "could not write the compile cache");
        }
        Ok((component, LoadOrigin::Compiled))
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component> {
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} is not a valid WebAssembly component: build it for wasm32-wasip2 (`cargo build --target wasm32-wasip2`)",
                    path.display()
                )
            })?;
        tracing::debug!(path = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
        Ok(component)
    }
}

fn write_cache_entry(component: &Component, dir: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    // Write to a unique temporary name and rename, so a concurrent reader never sees half a file.
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

/// One thread per engine that advances the epoch every tick; stopped when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn spawn(engine: Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("moa-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
