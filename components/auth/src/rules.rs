//! Route rules: which methods and paths need which token use and which `cognito:groups`; the
//! first rule that matches a request decides, and a request no rule matches is refused.
//!
//! `auth_rules` is a JSON list such as
//! `[{"method": "POST", "path": "/orders/...", "groups": ["CUSTOMER", "ADMIN"]},
//!   {"method": "GET", "path": "/stores/...", "public": true}]`.
//! `path` is a route as in spin.toml (`/...` wildcard, `:name` segments); `method` is one
//! method, a list, or `"*"`; `groups` empty means any signed-in user; `token_use` is
//! `"access"` (the default) or `"id"`.

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Methods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    #[serde(default)]
    method: Option<Methods>,
    path: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    token_use: Option<String>,
    #[serde(default)]
    public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    Access,
    Id,
}

impl TokenUse {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUse::Access => "access",
            TokenUse::Id => "id",
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    /// Upper-case methods; empty = any.
    methods: Vec<String>,
    segments: Vec<String>,
    wildcard: bool,
    pub groups: Vec<String>,
    pub token_use: TokenUse,
    pub public: bool,
}

#[derive(Debug)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn parse(text: &str) -> Result<Rules> {
        let texts: Vec<RuleText> = serde_json::from_str(text)?;
        let mut rules = Vec::new();
        for rule in texts {
            if !rule.path.starts_with('/') {
                bail!("rule path `{}` does not start with `/`", rule.path);
            }
            let methods = match rule.method {
                None => Vec::new(),
                Some(Methods::One(m)) if m == "*" => Vec::new(),
                Some(Methods::One(m)) => vec![m.to_ascii_uppercase()],
                Some(Methods::Many(ms)) => ms.iter().map(|m| m.to_ascii_uppercase()).collect(),
            };
            let token_use = match rule.token_use.as_deref() {
                None | Some("access") => TokenUse::Access,
                Some("id") => TokenUse::Id,
                Some(other) => bail!("token_use `{other}` is neither `access` nor `id`"),
            };
            let (pattern, wildcard) = match rule.path.strip_suffix("/...") {
                Some(prefix) => (prefix.to_string(), true),
                None => (rule.path.clone(), false),
            };
            rules.push(Rule {
                methods,
                segments: split(&pattern),
                wildcard,
                groups: rule.groups,
                token_use,
                public: rule.public,
            });
        }
        Ok(Rules(rules))
    }

    /// The first rule for `method` and `path`.
    pub fn find(&self, method: &str, path: &str) -> Option<&Rule> {
        let parts = split(path);
        self.0.iter().find(|rule| {
            (rule.methods.is_empty() || rule.methods.iter().any(|m| m == method))
                && (parts.len() == rule.segments.len()
                    || (rule.wildcard && parts.len() >= rule.segments.len()))
                && rule
                    .segments
                    .iter()
                    .zip(&parts)
                    .all(|(segment, part)| segment.starts_with(':') || segment == part)
        })
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
