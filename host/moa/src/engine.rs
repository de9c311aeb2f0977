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
    /// The compile cache is pruned to this many bytes (oldest used first) ...
    pub cache_max_bytes: u64,
    /// ... and of entries unused for this long.
    pub cache_max_age: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1000,
            max_memory_mb: 1024,
            cache_dir: default_cache_dir(),
            keep_resident_bytes: 8 << 20,
            decommit_batch_size: 1,
            cache_max_bytes: 1 << 30,
            cache_max_age: Duration::from_secs(30 * 24 * 3600),
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
    cache_max_bytes: u64,
    cache_max_age: Duration,
    /// Cache entries this engine loaded or wrote (never pruned by it).
    cache_used: std::sync::Mutex<Vec<PathBuf>>,
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
            cache_max_bytes: settings.cache_max_bytes,
            cache_max_age: settings.cache_max_age,
            cache_used: Default::default(),
            settings_key,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compile cache directory, if there is one.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
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
        let digest = hex::encode(Sha256::digest(&bytes));
        self.load_keyed(path, &digest, move || Ok(bytes))
    }

    /// Loads a component made at load time (the component at `path` composed with its
    /// dependencies): from the compile cache under `digest` (which names every input), else by
    /// running `make` and compiling its bytes.
    pub fn load_composed(
        &self,
        path: &Path,
        digest: &str,
        make: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(Component, LoadOrigin)> {
        self.load_keyed(path, digest, make)
    }

    fn load_keyed(
        &self,
        path: &Path,
        digest: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(Component, LoadOrigin)> {
        let Some(cache_dir) = &self.cache_dir else {
            return Ok((self.compile(path, &bytes()?)?, LoadOrigin::Compiled));
        };
        let cached = cache_dir.join(format!("{digest}-{}.cwasm", self.settings_key));
        if let Ok(mut used) = self.cache_used.lock() {
            used.push(cached.clone());
        }
        match trusted_cache_entry(cache_dir, &cached) {
            Ok(true) => {
                // SAFETY: the file is native code written by `Component::serialize` of an engine
                // with the same compatibility hash, in a directory only this user can write to
                // (checked just above, as is the file itself); wasmtime re-checks the header.
                match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                    Ok(component) => {
                        // Mark it used, for pruning by age.
                        let _ = std::fs::File::options()
                            .append(true)
                            .open(&cached)
                            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                        return Ok((component, LoadOrigin::Cache));
                    }
                    Err(err) => {
                        tracing::warn!(path = %cached.display(), error = %err, "ignoring unusable compile cache entry")
                    }
                }
            }
            Ok(false) => {}
            Err(why) => {
                tracing::warn!(path = %cached.display(), "not loading native code from the compile cache: {why}; compiling instead (fix: remove the directory or make it private to this user, chmod 700)");
                return Ok((self.compile(path, &bytes()?)?, LoadOrigin::Compiled));
            }
        }
        let component = self.compile(path, &bytes()?)?;
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

    /// Removes cache entries of this engine's kind unused for `cache_max_age`, then the least
    /// recently used ones until the cache holds at most `cache_max_bytes`; the entries this
    /// engine loaded or wrote stay.
    pub fn prune_cache(&self) {
        let Some(dir) = &self.cache_dir else {
            return;
        };
        let keep = self
            .cache_used
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        if let Err(err) = prune(dir, self.cache_max_bytes, self.cache_max_age, &keep) {
            tracing::debug!(dir = %dir.display(), error = %err, "compile cache not pruned");
        }
    }
}

/// Whether `entry` exists and may be loaded: it and its directory belong to this user and no one
/// else can write to them. `Err` says why not when the entry exists but is not private.
fn trusted_cache_entry(dir: &Path, entry: &Path) -> std::result::Result<bool, String> {
    use std::os::unix::fs::MetadataExt as _;
    let file = match std::fs::symlink_metadata(entry) {
        Ok(meta) => meta,
        Err(_) => return Ok(false),
    };
    let dir_meta = std::fs::metadata(dir).map_err(|e| format!("cannot stat the cache dir: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !file.is_file() {
        return Err("the entry is not a regular file".into());
    }
    for (what, meta) in [("file", &file), ("directory", &dir_meta)] {
        if meta.uid() != uid {
            return Err(format!(
                "the cache {what} belongs to uid {}, not {uid}",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "the cache {what} is writable by others (mode {:o})",
                meta.mode() & 0o777
            ));
        }
    }
    Ok(true)
}

fn prune(dir: &Path, max_bytes: u64, max_age: Duration, keep: &[PathBuf]) -> Result<()> {
    let now = std::time::SystemTime::now();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cwasm") || keep.contains(&path) {
            continue;
        }
        let meta = entry.metadata()?;
        let used = meta.modified().unwrap_or(now);
        let age = now.duration_since(used).unwrap_or_default();
        if age > max_age {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        entries.push((used, meta.len(), path));
    }
    let kept: u64 = keep
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut total = kept + entries.iter().map(|(_, len, _)| len).sum::<u64>();
    entries.sort();
    for (_, len, path) in entries {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
    Ok(())
}

fn write_cache_entry(component: &Component, dir: &Path, target: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    // Native code is loaded from here: only this user may write to the directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
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

/// Whether `error` says the pooling allocator has no free slot (instances, memories, tables,
/// stacks): wasmtime's own error type, found anywhere in the chain.
pub fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}
