//! Sorts and projections: parsed once (a bad one is an error on every backend), applied here for the
//! embedded store. Sorting follows MongoDB: types first, an array sorts by its least (ascending) or
//! greatest (descending) element, a missing field as null.

use super::values::{compare, path_values};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A parsed sort: `(path, ascending)` keys in priority order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sort(Vec<(String, bool)>);

impl Sort {
    pub fn parse(sort: &Value) -> Result<Self, String> {
        let Value::Object(keys) = sort else {
            return Err("a sort is a JSON object such as {\"price\": -1}".into());
        };
        keys.iter()
            .map(|(path, direction)| match direction.as_i64() {
                Some(1) => Ok((path.clone(), true)),
                Some(-1) => Ok((path.clone(), false)),
                _ => Err(format!(
                    "sort `{path}`: use 1 (ascending) or -1 (descending)"
                )),
            })
            .collect::<Result<_, _>>()
            .map(Sort)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, `(path, ascending)`, in priority order.
    pub fn keys(&self) -> &[(String, bool)] {
        &self.0
    }

    /// Orders two documents by the sort keys.
    pub fn order(&self, a: &Value, b: &Value) -> Ordering {
        for (path, ascending) in &self.0 {
            let (ka, kb) = (sort_key(a, path, *ascending), sort_key(b, path, *ascending));
            let order = compare(&ka, &kb);
            let order = if *ascending { order } else { order.reverse() };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }
}

fn sort_key(document: &Value, path: &str, ascending: bool) -> Value {
    let mut candidates: Vec<&Value> = Vec::new();
    for found in path_values(document, path).into_iter().flatten() {
        match found {
            Value::Array(items) if !items.is_empty() => candidates.extend(items),
            other => candidates.push(other),
        }
    }
    let pick = if ascending {
        candidates.into_iter().min_by(|a, b| compare(a, b))
    } else {
        candidates.into_iter().max_by(|a, b| compare(a, b))
    };
    pick.cloned().unwrap_or(Value::Null)
}

/// A parsed projection: include some paths or exclude some paths (`_id` either way).
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    include: bool,
    paths: Vec<String>,
    keep_id: bool,
}

impl Projection {
    pub fn parse(projection: &Value) -> Result<Self, String> {
        let Value::Object(fields) = projection else {
            return Err("a projection is a JSON object such as {\"name\": 1}".into());
        };
        let mut include = None;
        let mut keep_id = true;
        let mut paths = Vec::new();
        for (path, flag) in fields {
            let on = match flag {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_f64() == Some(0.0) => false,
                Value::Number(n) if n.as_f64() == Some(1.0) => true,
                _ => {
                    return Err(format!(
                        "projection `{path}`: use 1 (include) or 0 (exclude)"
                    ));
                }
            };
            if path == "_id" {
                keep_id = on;
                continue;
            }
            if path.is_empty() || path.split('.').any(str::is_empty) || path.starts_with('$') {
                return Err(format!("projection: `{path}` is not a field path"));
            }
            if include.is_some_and(|i| i != on) {
                return Err(
                    "a projection either includes or excludes fields (only `_id` may differ)"
                        .into(),
                );
            }
            include = Some(on);
            paths.push(path.clone());
        }
        Ok(Projection {
            include: include.unwrap_or(false),
            paths,
            keep_id,
        })
    }

    pub fn apply(&self, document: Value) -> Value {
        let Value::Object(mut fields) = document else {
            return document;
        };
        let id = fields.get("_id").cloned();
        let mut out = if self.include {
            let mut out = Map::new();
            for path in &self.paths {
                copy_path(&Value::Object(fields.clone()), &mut out, path);
            }
            out
        } else {
            for path in &self.paths {
                remove_path(&mut fields, path);
            }
            fields
        };
        match (self.keep_id, id) {
            (true, Some(id)) => {
                out.insert("_id".into(), id);
            }
            (false, _) => {
                out.remove("_id");
            }
            _ => {}
        }
        Value::Object(out)
    }
}

/// Copies what `path` reaches into `out`, keeping the nesting (arrays of documents included).
fn copy_path(source: &Value, out: &mut Map<String, Value>, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let Some(value) = source.as_object().and_then(|f| f.get(head)) else {
        return;
    };
    match rest {
        None => {
            out.insert(head.to_string(), value.clone());
        }
        Some(rest) => match value {
            Value::Object(_) => {
                let entry = out
                    .entry(head.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(inner) = entry {
                    copy_path(value, inner, rest);
                }
            }
            Value::Array(items) => {
                let projected: Vec<Value> = items
                    .iter()
                    .filter(|item| item.is_object())
                    .map(|item| {
                        let mut inner = Map::new();
                        copy_path(item, &mut inner, rest);
                        Value::Object(inner)
                    })
                    .collect();
                out.insert(head.to_string(), Value::Array(projected));
            }
            _ => {}
        },
    }
}

fn remove_path(fields: &mut Map<String, Value>, path: &str) {
    match path.split_once('.') {
        None => {
            fields.remove(path);
        }
        Some((head, rest)) => match fields.get_mut(head) {
            Some(Value::Object(inner)) => remove_path(inner, rest),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        remove_path(inner, rest);
                    }
                }
            }
            _ => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_by_keys_in_order() {
        let sort = Sort::parse(&json!({"a": 1, "b": -1})).expect("sort");
        let mut docs = vec![
            json!({"a": 2, "b": 1}),
            json!({"a": 1, "b": 1}),
            json!({"a": 1, "b": 5}),
            json!({"b": 0}),
        ];
        docs.sort_by(|x, y| sort.order(x, y));
        assert_eq!(
            docs,
            vec![
                json!({"b": 0}),
                json!({"a": 1, "b": 5}),
                json!({"a": 1, "b": 1}),
                json!({"a": 2, "b": 1})
            ]
        );
        assert!(Sort::parse(&json!({"a": 2})).is_err());
    }

    #[test]
    fn projections_include_or_exclude() {
        let doc = json!({"_id": 1, "a": {"b": 1, "c": 2}, "d": 3});
        let p = Projection::parse(&json!({"a.b": 1})).expect("projection");
        assert_eq!(p.apply(doc.clone()), json!({"_id": 1, "a": {"b": 1}}));
        let p = Projection::parse(&json!({"a": 0, "_id": 0})).expect("projection");
        assert_eq!(p.apply(doc), json!({"d": 3}));
        assert!(Projection::parse(&json!({"a": 1, "d": 0})).is_err());
    }
}
