//! MongoDB's update language as moa runs it: `$set`, `$unset`, `$inc`, `$push` (with `$each`) and
//! `$setOnInsert`, parsed once (anything else is an error on every backend) and applied here for the
//! embedded store.

use super::values::get_path;
use serde_json::{Map, Value};

/// A parsed update document.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    ops: Vec<(Operator, String, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    Set,
    Unset,
    Inc,
    Push,
    SetOnInsert,
}

impl Update {
    /// Parses an operator update (`{"$set": {...}, ...}`), or says what is wrong with it.
    pub fn parse(update: &Value) -> Result<Self, String> {
        let Value::Object(operators) = update else {
            return Err(
                "an update is a JSON object, e.g. {\"$set\": {\"status\": \"paid\"}}".into(),
            );
        };
        if operators.is_empty() {
            return Err(
                "an update needs at least one operator ($set, $unset, $inc, $push, $setOnInsert)"
                    .into(),
            );
        }
        let mut ops = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        for (name, fields) in operators {
            let operator = match name.as_str() {
                "$set" => Operator::Set,
                "$unset" => Operator::Unset,
                "$inc" => Operator::Inc,
                "$push" => Operator::Push,
                "$setOnInsert" => Operator::SetOnInsert,
                other if other.starts_with('$') => {
                    return Err(format!(
                        "unsupported update operator `{other}` (moa runs $set, $unset, $inc, $push, $setOnInsert)"
                    ));
                }
                field => {
                    return Err(format!(
                        "`{field}` is not an update operator; to replace a whole document use replace-one"
                    ));
                }
            };
            let Value::Object(fields) = fields else {
                return Err(format!("{name} takes an object of field paths"));
            };
            for (path, value) in fields {
                if path.is_empty() || path.split('.').any(|s| s.is_empty() || s.starts_with('$')) {
                    return Err(format!("{name}: `{path}` is not a field path"));
                }
                if (path == "_id" || path.starts_with("_id.")) && operator != Operator::SetOnInsert
                {
                    return Err(format!("{name} cannot change `_id`"));
                }
                if operator == Operator::Inc && !value.is_number() {
                    return Err(format!("$inc: `{path}` must be a number"));
                }
                if operator == Operator::Push
                    && let Value::Object(spec) = value
                    && spec.keys().any(|k| k.starts_with('$'))
                    && (spec.len() != 1 || !spec.get("$each").is_some_and(Value::is_array))
                {
                    return Err(format!(
                        "$push: `{path}` supports only {{\"$each\": [...]}}"
                    ));
                }
                // Two operators on one path (or a path and its parent) conflict, as in MongoDB.
                if touched.iter().any(|t| overlaps(t, path)) {
                    return Err(format!("update paths conflict at `{path}`"));
                }
                touched.push(path.clone());
                ops.push((operator, path.clone(), value.clone()));
            }
        }
        Ok(Update { ops })
    }

    /// Applies the update to `document`; `inserting` applies `$setOnInsert` too. Returns whether
    /// the document changed, or an error (e.g. `$inc` on a string) that leaves it unchanged.
    pub fn apply(
        &self,
        document: &mut Map<String, Value>,
        inserting: bool,
    ) -> Result<bool, String> {
        let mut next = document.clone();
        for (operator, path, value) in &self.ops {
            match operator {
                Operator::Set => set_path_checked(&mut next, path, value.clone())?,
                Operator::SetOnInsert if inserting => {
                    set_path_checked(&mut next, path, value.clone())?
                }
                Operator::SetOnInsert => {}
                Operator::Unset => unset_path(&mut next, path),
                Operator::Inc => {
                    let current = get_path(&Value::Object(next.clone()), path).cloned();
                    let sum = match current {
                        None => value.clone(),
                        Some(Value::Number(n)) => add(&n, value)?,
                        _ => return Err(format!("$inc: `{path}` does not hold a number")),
                    };
                    set_path_checked(&mut next, path, sum)?;
                }
                Operator::Push => {
                    let items = match value {
                        Value::Object(spec) if spec.contains_key("$each") => match &spec["$each"] {
                            Value::Array(items) => items.clone(),
                            _ => Vec::new(),
                        },
                        other => vec![other.clone()],
                    };
                    match get_path(&Value::Object(next.clone()), path) {
                        None => set_path_checked(&mut next, path, Value::Array(items))?,
                        Some(Value::Array(existing)) => {
                            let mut existing = existing.clone();
                            existing.extend(items);
                            set_path_checked(&mut next, path, Value::Array(existing))?;
                        }
                        Some(_) => return Err(format!("$push: `{path}` does not hold an array")),
                    }
                }
            }
        }
        let changed = next != *document;
        *document = next;
        Ok(changed)
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

fn add(current: &serde_json::Number, by: &Value) -> Result<Value, String> {
    let Value::Number(by) = by else {
        return Err("$inc takes a number".into());
    };
    if let (Some(a), Some(b)) = (current.as_i64(), by.as_i64()) {
        return a
            .checked_add(b)
            .map(Value::from)
            .ok_or_else(|| "$inc overflows a 64-bit integer".to_string());
    }
    let sum = current.as_f64().unwrap_or(0.0) + by.as_f64().unwrap_or(0.0);
    serde_json::Number::from_f64(sum)
        .map(Value::Number)
        .ok_or_else(|| "$inc gives a value that is not a finite number".to_string())
}

/// Sets `path` in `document`, creating objects on the way.
pub fn set_path(document: &mut Map<String, Value>, path: &str, value: Value) {
    let _ = set_path_checked(document, path, value);
}

fn set_path_checked(
    document: &mut Map<String, Value>,
    path: &str,
    value: Value,
) -> Result<(), String> {
    let mut segments = path.split('.').peekable();
    let mut current = document;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            current.insert(segment.to_string(), value);
            return Ok(());
        }
        let entry = current
            .entry(segment.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(fields) => fields,
            _ => return Err(format!("cannot set `{path}`: `{segment}` is not an object")),
        };
    }
    Ok(())
}

fn unset_path(document: &mut Map<String, Value>, path: &str) {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else { return };
    let mut current = document;
    for segment in segments {
        current = match current.get_mut(segment) {
            Some(Value::Object(fields)) => fields,
            _ => return,
        };
    }
    current.remove(last);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(update: Value, doc: Value) -> Result<Value, String> {
        let Value::Object(mut doc) = doc else {
            unreachable!()
        };
        Update::parse(&update)?.apply(&mut doc, false)?;
        Ok(Value::Object(doc))
    }

    #[test]
    fn operators_change_documents() {
        assert_eq!(
            apply(
                json!({"$set": {"a.b": 1}, "$inc": {"n": 2}, "$unset": {"x": ""}}),
                json!({"n": 1, "x": 0})
            ),
            Ok(json!({"n": 3, "a": {"b": 1}}))
        );
        assert_eq!(
            apply(
                json!({"$push": {"l": {"$each": [2, 3]}}}),
                json!({"l": [1]})
            ),
            Ok(json!({"l": [1, 2, 3]}))
        );
        assert_eq!(
            apply(json!({"$inc": {"f": 0.5}}), json!({"f": 1})),
            Ok(json!({"f": 1.5}))
        );
    }

    #[test]
    fn bad_updates_are_refused() {
        for bad in [
            json!({"$rename": {"a": "b"}}),
            json!({"a": 1}),
            json!({"$set": {"_id": 2}}),
            json!({"$inc": {"n": "1"}}),
            json!({"$set": {"a": 1}, "$inc": {"a.b": 1}}),
            json!({}),
        ] {
            assert!(Update::parse(&bad).is_err(), "{bad} should be refused");
        }
        assert!(apply(json!({"$inc": {"s": 1}}), json!({"s": "x"})).is_err());
        assert!(apply(json!({"$push": {"s": 1}}), json!({"s": 2})).is_err());
    }
}
