//! `{{ variable }}` templates as Spin writes them in component variables and outbound hosts:
//! parsing (to check references at load time) and rendering (with the resolved values).

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Variable(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `{{` must be closed by `}}` and enclose one variable name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` without a closing `}}}}` in {text:?}"))?;
            let name = after[..end].trim();
            if !is_valid_variable_name(name) {
                return Err(format!(
                    "`{{{{ {name} }}}}` is not a valid variable reference in {text:?}: names are lowercase letters, digits and `_`, starting with a letter"
                ));
            }
            parts.push(Part::Variable(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The variable names the template references, in order of appearance.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template has no variable references.
    pub fn is_literal(&self) -> bool {
        self.variables().next().is_none()
    }

    /// Renders the template, asking `resolve` for each variable's value.
    pub fn render<E>(
        &self,
        mut resolve: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(name) => out.push_str(&resolve(name)?),
            }
        }
        Ok(out)
    }
}

/// Spin's rule for variable names: lowercase ASCII letters, digits and underscores,
/// starting with a letter.
pub fn is_valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_variables_between_literals() {
        let t = Template::parse("https://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["host", "port"]);
        let out = t
            .render(|name| {
                Ok::<_, ()>(if name == "host" {
                    "a.b".into()
                } else {
                    "80".into()
                })
            })
            .unwrap();
        assert_eq!(out, "https://a.b:80/x");
    }

    #[test]
    fn rejects_unclosed_and_bad_names() {
        assert!(Template::parse("{{ host").is_err());
        assert!(Template::parse("{{ Host }}").is_err());
        assert!(Template::parse("{{ 1x }}").is_err());
        assert!(Template::parse("plain").unwrap().is_literal());
    }
}
