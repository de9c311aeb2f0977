//! Text generation for `fermyon:spin/llm` `infer`: an OpenAI-compatible chat-completions endpoint
//! named by `[llm_compute]` in the runtime config (Spin's `remote_http` with `api_type = "open_ai"`).
//!
//! The prompt goes as one user message; the component's model name (or `model` from the config)
//! is the provider's model. Rate limits (429), server errors (5xx) and connection failures are
//! retried with backoff inside the call's `timeout_ms`; anything else is answered at once.

use crate::runtime_config::{RuntimeConfig, ValueSource};
use anyhow::{Context as _, Result, bail};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[llm_compute]` in the runtime config.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LlmComputeSection {
    /// An HTTP inference service.
    RemoteHttp {
        /// The API's base URL, e.g. `https://api.openai.com/v1`; requests go to
        /// `<url>/chat/completions`.
        url: String,
        /// Sent as `Authorization: Bearer <token>`; `{ env = "NAME" }` keeps it out of the file.
        auth_token: Option<ValueSource>,
        /// The wire protocol; moa speaks `open_ai` (chat completions).
        api_type: Option<String>,
        /// The provider's model name for every component [default: the name the component passes].
        model: Option<String>,
        /// Whole-call budget, retries included [default 30000].
        timeout_ms: Option<u64>,
        /// Attempts for 429 / 5xx / connection failures [default 3].
        max_attempts: Option<u32>,
    },
}

/// Why an inference failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The provider refused the request (4xx other than 429): retrying will not help. 400, 413
    /// and 422 are about the prompt or parameters; 401/403/404 about the key or the model.
    #[error("the LLM provider refused the request: HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    /// The provider could not answer in time (timeouts, 429, 5xx, connection failures).
    #[error("the LLM provider is unavailable: {0}")]
    Unavailable(String),
}

/// The parameters of one inference, as `fermyon:spin/llm` gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
}

/// A generated text and its token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    pub text: String,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    outcome: &'static str,
}

/// A chat-completions client for one endpoint.
pub struct ChatCompletions {
    client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    model: Option<String>,
    timeout: Duration,
    max_attempts: u32,
    calls: Family<OutcomeLabels, Counter>,
    duration: Histogram,
}

impl ChatCompletions {
    /// The client `[llm_compute]` asks for, or `None` without that section (then `infer`
    /// answers `model-not-supported`, and components fall back to what they do without an LLM).
    pub fn configure(
        runtime_config: &RuntimeConfig,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Option<Arc<ChatCompletions>>> {
        let Some(section) = runtime_config.section::<LlmComputeSection>("llm_compute")? else {
            return Ok(None);
        };
        let describe = runtime_config.describe();
        let client =
            ChatCompletions::new(section).with_context(|| format!("{describe}: [llm_compute]"))?;
        let mut registry = Registry::default();
        registry.register(
            "moa_llm_inferences",
            "LLM inferences by model and outcome (ok, refused, unavailable)",
            client.calls.clone(),
        );
        registry.register(
            "moa_llm_inference_seconds",
            "LLM inference time, retries included",
            client.duration.clone(),
        );
        metrics.add_source(Arc::new(registry));
        Ok(Some(Arc::new(client)))
    }

    pub fn new(section: LlmComputeSection) -> Result<ChatCompletions> {
        let LlmComputeSection::RemoteHttp {
            url,
            auth_token,
            api_type,
            model,
            timeout_ms,
            max_attempts,
        } = section;
        match api_type.as_deref() {
            None | Some("open_ai") => {}
            Some(other) => bail!(
                "api_type `{other}` is not supported\n  help: moa speaks OpenAI-compatible chat completions: set api_type = \"open_ai\" (vLLM, Ollama, llama.cpp's server and most providers offer it)"
            ),
        }
        let base = url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).with_context(|| {
            format!(
                "`url = \"{url}\"` is not a URL\n  help: e.g. url = \"https://api.openai.com/v1\""
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("`url` must be http:// or https://, not {}", parsed.scheme());
        }
        let token = auth_token
            .map(|t| t.resolve("[llm_compute] auth_token"))
            .transpose()?;
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(30_000).max(1));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ChatCompletions {
            client,
            endpoint: format!("{base}/chat/completions"),
            token,
            model,
            timeout,
            max_attempts: max_attempts.unwrap_or(3).max(1),
            calls: Family::default(),
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        })
    }

    /// Where requests go, for the start-up banner.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Generates a completion of `prompt` with `model`.
    pub async fn infer(
        &self,
        model: &str,
        prompt: &str,
        sampling: Sampling,
        traceparent: Option<&str>,
    ) -> Result<Inferred, InferError> {
        let started = Instant::now();
        let model = self.model.as_deref().unwrap_or(model);
        let result = self
            .infer_with_retries(model, prompt, sampling, traceparent, started)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(InferError::Refused { .. }) => "refused",
            Err(InferError::Unavailable(_)) => "unavailable",
        };
        self.calls
            .get_or_create(&OutcomeLabels {
                model: model.to_string(),
                outcome,
            })
            .inc();
        self.duration.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn infer_with_retries(
        &self,
        model: &str,
        prompt: &str,
        sampling: Sampling,
        traceparent: Option<&str>,
        started: Instant,
    ) -> Result<Inferred, InferError> {
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
        });
        if let Some(max_tokens) = sampling.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = sampling.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(top_p) = sampling.top_p {
            body["top_p"] = json!(top_p);
        }
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let remaining = self.timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(InferError::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )));
            }
            let failure = match self.attempt(&body, traceparent, remaining).await {
                Ok(inferred) => return Ok(inferred),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Retry { why, after }) => {
                    if let Some(after) = after {
                        backoff = backoff.max(after);
                    }
                    why
                }
            };
            let remaining = self.timeout.saturating_sub(started.elapsed());
            if attempt >= self.max_attempts || backoff >= remaining {
                return Err(InferError::Unavailable(format!(
                    "{failure} (after {attempt} attempt{} in {} ms)",
                    if attempt == 1 { "" } else { "s" },
                    started.elapsed().as_millis()
                )));
            }
            tracing::debug!(attempt, %failure, "LLM inference failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        body: &Value,
        traceparent: Option<&str>,
        remaining: Duration,
    ) -> Result<Inferred, Attempt> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .json(body)
            .timeout(remaining);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| Attempt::Retry {
            why: describe_reqwest(&e),
            after: None,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(|e| Attempt::Retry {
            why: describe_reqwest(&e),
            after: None,
        })?;
        if status.is_success() {
            return parse_completion(&bytes).map_err(|why| {
                Attempt::Final(InferError::Unavailable(format!(
                    "the provider's answer is not a chat completion: {why}"
                )))
            });
        }
        let message = provider_message(&bytes);
        if status.as_u16() == 429 || status.is_server_error() {
            Err(Attempt::Retry {
                why: format!("HTTP {}: {message}", status.as_u16()),
                after: retry_after,
            })
        } else {
            Err(Attempt::Final(InferError::Refused {
                status: status.as_u16(),
                message,
            }))
        }
    }
}

enum Attempt {
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Final(InferError),
}

fn describe_reqwest(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "the request timed out".into()
    } else if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        error.to_string()
    }
}

/// The provider's error message (`{"error": {"message": ...}}`), or the body's start.
fn provider_message(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes)
        && let Some(message) = value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
    {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(200).collect()
}

/// `choices[0].message.content` and the usage of a chat completion.
fn parse_completion(bytes: &[u8]) -> Result<Inferred, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let text = value["choices"][0]["message"]["content"]
        .as_str()
        .ok_or("no choices[0].message.content")?
        .to_string();
    let count = |key: &str| {
        value["usage"][key]
            .as_u64()
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(Inferred {
        text,
        prompt_tokens: count("prompt_tokens"),
        generated_tokens: count("completion_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<LlmComputeSection> {
        let config = RuntimeConfig::parse(std::path::Path::new("rc.toml"), text)?;
        config
            .section::<LlmComputeSection>("llm_compute")?
            .context("no section")
    }

    #[test]
    fn spins_remote_http_section_with_the_open_ai_api_type_is_accepted() -> Result<()> {
        let client = ChatCompletions::new(section(
            "[llm_compute]\ntype = \"remote_http\"\nurl = \"https://api.example.com/v1/\"\napi_type = \"open_ai\"\nauth_token = \"k\"\n",
        )?)?;
        assert_eq!(
            client.endpoint(),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(client.token.as_deref(), Some("k"));
        Ok(())
    }

    #[test]
    fn other_protocols_and_bad_urls_are_refused_with_the_fix() -> Result<()> {
        let err = ChatCompletions::new(section(
            "[llm_compute]\ntype = \"remote_http\"\nurl = \"https://x\"\napi_type = \"cloud_gpu\"\n",
        )?)
        .err()
        .context("accepted")?;
        assert!(
            format!("{err:#}").contains("api_type = \"open_ai\""),
            "{err:#}"
        );
        let err = ChatCompletions::new(section(
            "[llm_compute]\ntype = \"remote_http\"\nurl = \"api.example.com\"\n",
        )?)
        .err()
        .context("accepted")?;
        assert!(format!("{err:#}").contains("is not a URL"), "{err:#}");
        let err =
            section("[llm_compute]\ntype = \"remote_http\"\nurl = \"https://x\"\ntoken = 1\n")
                .err()
                .context("accepted")?;
        assert!(
            format!("{err:#}").contains("unknown field `token`"),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn completions_and_provider_errors_are_read() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#;
        assert_eq!(
            parse_completion(ok),
            Ok(Inferred {
                text: "hi".into(),
                prompt_tokens: 12,
                generated_tokens: 3
            })
        );
        assert!(parse_completion(br#"{"choices":[]}"#).is_err());
        assert_eq!(
            provider_message(
                br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error"}}"#
            ),
            "Incorrect API key"
        );
        assert_eq!(provider_message(b"Bad Gateway"), "Bad Gateway");
    }
}
