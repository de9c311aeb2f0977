//! The embedding backend: tokenize a batch, run the ONNX graph once, pool and normalise per
//! `moa.json`. One ONNX Runtime session, thread settings from [`EmbedderSettings`].

use crate::config::{ModelConfig, Pooling};
use ndarray::{Array2, ArrayView3, Axis};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use std::path::Path;
use std::sync::Mutex;
use tokenizers::Tokenizer;

/// Why a batch could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "text {index} has {tokens} tokens, more than the model's {max} (ask for truncation, or shorten it)"
    )]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("onnxruntime: {0}")]
    Runtime(String),
}

/// Which prefix from moa.json a text gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextKind {
    /// A search query (`query_prefix`).
    #[default]
    Query,
    /// A document to be searched (`passage_prefix`).
    Passage,
    /// No prefix.
    Raw,
}

/// Per-request choices.
#[derive(Debug, Clone, Copy)]
pub struct EmbedOptions {
    pub kind: TextKind,
    /// L2-normalise (default: moa.json's `normalize`).
    pub normalize: Option<bool>,
    /// Cut texts longer than the model's limit instead of refusing them.
    pub truncate: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            kind: TextKind::Query,
            normalize: None,
            truncate: false,
        }
    }
}

/// ONNX Runtime session settings.
#[derive(Debug, Clone, Copy)]
pub struct EmbedderSettings {
    /// Threads one inference uses (intra-op); default: all cores.
    pub intra_threads: usize,
    /// Graph optimisation level 0-3 (3: all fusions and layout changes; the default).
    pub optimization_level: u8,
    /// Let idle intra-op threads spin for work between runs: a little faster under steady load,
    /// but it burns CPU that a host sharing the cores (in-process mode) wants back.
    pub allow_spinning: bool,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        EmbedderSettings {
            intra_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            optimization_level: 3,
            allow_spinning: true,
        }
    }
}

/// A loaded model.
pub struct Embedder {
    /// Keeps ONNX Runtime's environment alive as long as the session.
    _environment: Environment,
    config: ModelConfig,
    tokenizer: Tokenizer,
    session: Mutex<Session>,
}

impl Embedder {
    /// Loads `dir` (model.onnx, tokenizer.json, moa.json) into a session of `environment`
    /// (see [`init_onnxruntime`]).
    pub fn load(
        environment: &Environment,
        dir: &Path,
        settings: EmbedderSettings,
    ) -> anyhow::Result<Self> {
        let config = ModelConfig::load(dir)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("cannot load {}: {e}", dir.join("tokenizer.json").display())
        })?;
        // Padding is the batcher's business and truncation is per request.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let model = dir.join("model.onnx");
        let failed = |e: String| anyhow::anyhow!("cannot load {}: {e}", model.display());
        let level = match settings.optimization_level {
            0 => GraphOptimizationLevel::Disable,
            1 => GraphOptimizationLevel::Level1,
            2 => GraphOptimizationLevel::Level2,
            _ => GraphOptimizationLevel::Level3,
        };
        let session = Session::builder(environment)
            .map_err(|e| failed(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| failed(e.to_string()))?
            .with_intra_threads(settings.intra_threads.max(1))
            .map_err(|e| failed(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| failed(e.to_string()))?
            .with_intra_op_spinning(settings.allow_spinning)
            .map_err(|e| failed(e.to_string()))?
            .commit_from_file(&model)
            .map_err(|e| failed(e.to_string()))?;
        Ok(Embedder {
            _environment: environment.clone(),
            config,
            tokenizer,
            session: Mutex::new(session),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Token ids of each text with its prefix, special tokens included; over-long texts are cut
    /// (`truncate`) or refused.
    pub fn tokenize(
        &self,
        texts: &[&str],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<u32>>, EmbedError> {
        self.tokenize_with_prefix(texts, self.prefix(options.kind), options.truncate)
    }

    /// The prefix moa.json gives texts of `kind`.
    pub fn prefix(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.config.query_prefix,
            TextKind::Passage => &self.config.passage_prefix,
            TextKind::Raw => "",
        }
    }

    /// Like [`Embedder::tokenize`] with an explicit prefix.
    pub fn tokenize_with_prefix(
        &self,
        texts: &[&str],
        prefix: &str,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, EmbedError> {
        let encode = |text: &str| {
            self.tokenizer
                .encode(format!("{prefix}{text}"), true)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))
        };
        // One text (the common single-query call) skips the batch encoder's thread pool.
        let encodings = match texts {
            [text] => vec![encode(text)?],
            _ => {
                let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
                self.tokenizer
                    .encode_batch(inputs, true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?
            }
        };
        let max = self.config.max_tokens;
        let mut out = Vec::with_capacity(encodings.len());
        for (index, encoding) in encodings.into_iter().enumerate() {
            let mut ids = encoding.get_ids().to_vec();
            if ids.len() > max {
                if !truncate {
                    return Err(EmbedError::TooLong {
                        index,
                        tokens: ids.len(),
                        max,
                    });
                }
                // Keep the closing special token.
                let last = ids[ids.len() - 1];
                ids.truncate(max);
                ids[max - 1] = last;
            }
            out.push(ids);
        }
        Ok(out)
    }

    /// One vector per text, in order.
    pub fn embed(
        &self,
        texts: &[&str],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids = self.tokenize(texts, options)?;
        self.embed_tokens(&ids, options.normalize.unwrap_or(self.config.normalize))
    }

    /// Runs the graph on already tokenized texts (one padded batch).
    pub fn embed_tokens<T: AsRef<[u32]>>(
        &self,
        batch: &[T],
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let width = batch
            .iter()
            .map(|t| t.as_ref().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Array2::<i64>::zeros((batch.len(), width));
        let mut mask = Array2::<i64>::zeros((batch.len(), width));
        for (row, tokens) in batch.iter().enumerate() {
            for (col, id) in tokens.as_ref().iter().enumerate() {
                ids[(row, col)] = i64::from(*id);
                mask[(row, col)] = 1;
            }
        }
        let runtime = |e: ort::Error| EmbedError::Runtime(e.to_string());
        let mut session = self
            .session
            .lock()
            .map_err(|_| EmbedError::Runtime("session lock poisoned".into()))?;
        let ids_tensor = TensorRef::from_array_view(&ids).map_err(runtime)?;
        let mask_tensor = TensorRef::from_array_view(&mask).map_err(runtime)?;
        let outputs = session
            .run(ort::inputs![
                self.config.inputs[0].as_str() => ids_tensor,
                self.config.inputs[1].as_str() => mask_tensor,
            ])
            .map_err(runtime)?;
        let hidden = outputs[self.config.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(runtime)?;
        let hidden: ArrayView3<f32> = hidden
            .into_dimensionality()
            .map_err(|e| EmbedError::Runtime(format!("unexpected output shape: {e}")))?;
        Ok(pool(hidden, &mask, self.config.pooling, normalize))
    }
}

/// Sentence vectors from token vectors `[batch, tokens, dim]`.
fn pool(
    hidden: ArrayView3<f32>,
    mask: &Array2<i64>,
    pooling: Pooling,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(hidden.len_of(Axis(0)));
    for (row, tokens) in hidden.outer_iter().enumerate() {
        let mut vector = match pooling {
            Pooling::Cls => tokens.row(0).to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; tokens.len_of(Axis(1))];
                let mut count = 0f32;
                for (t, token) in tokens.outer_iter().enumerate() {
                    if mask[(row, t)] == 1 {
                        for (s, v) in sum.iter_mut().zip(token.iter()) {
                            *s += v;
                        }
                        count += 1.0;
                    }
                }
                sum.iter_mut().for_each(|s| *s /= count.max(1.0));
                sum
            }
        };
        if normalize {
            self::normalize(&mut vector);
        }
        out.push(vector);
    }
    out
}

/// Scales `vector` to unit length (L2).
pub(crate) fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|v| *v /= norm);
}

/// Loads the ONNX Runtime shared library (from PyPI onnxruntime; see scripts/fetch-model.sh) and
/// creates the process's environment. A process has one: later calls return it (and refuse a
/// different library).
pub fn init_onnxruntime(library: &Path) -> anyhow::Result<Environment> {
    static LOADED: std::sync::Mutex<Option<(std::path::PathBuf, Environment)>> =
        std::sync::Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((path, environment)) = loaded.as_ref() {
        if path != library {
            anyhow::bail!(
                "ONNX Runtime is already loaded from {}; one process cannot also load {}",
                path.display(),
                library.display()
            );
        }
        return Ok(environment.clone());
    }
    let environment = load_onnxruntime(library)?;
    *loaded = Some((library.to_path_buf(), environment.clone()));
    Ok(environment)
}

fn load_onnxruntime(library: &Path) -> anyhow::Result<Environment> {
    if !library.exists() {
        anyhow::bail!(
            "ONNX Runtime library {} not found\n  help: run scripts/fetch-model.sh, or set MOA_ORT_LIB",
            library.display()
        );
    }
    ort::init_from(library)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", library.display()))?
        .with_name("moa")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start ONNX Runtime: {e}"))
}
