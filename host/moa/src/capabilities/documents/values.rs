//! JSON values with MongoDB's semantics: how a dotted path reaches into documents and arrays,
//! equality (1 equals 1.0), the cross-type sort order, and `_id` keys and generation.

use serde_json::Value;
use std::cmp::Ordering;

/// Everything `path` reaches in `document`: `None` where it is missing. An array on the way is
/// walked element by element (and a numeric segment also indexes it), as MongoDB does.
pub fn path_values<'a>(document: &'a Value, path: &str) -> Vec<Option<&'a Value>> {
    let mut out = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    walk(document, &segments, &mut out);
    out
}

fn walk<'a>(value: &'a Value, segments: &[&str], out: &mut Vec<Option<&'a Value>>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(Some(value));
        return;
    };
    match value {
        Value::Object(fields) => match fields.get(*first) {
            Some(next) => walk(next, rest, out),
            None => out.push(None),
        },
        Value::Array(items) => {
            let before = out.len();
            if let Ok(index) = first.parse::<usize>()
                && let Some(item) = items.get(index)
            {
                walk(item, rest, out);
            }
            for item in items {
                if item.is_object() {
                    walk(item, segments, out);
                }
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

/// The one value at `path` without walking arrays (for updates, sorts and projections).
pub fn get_path<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = document;
    for segment in path.split('.') {
        current = match current {
            Value::Object(fields) => fields.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Equality as MongoDB compares values: numbers by value, objects field by field in order.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && values_equal(va, vb))
        }
        _ => a == b,
    }
}

fn number_order(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    match (x.as_i64(), y.as_i64()) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => {
            let (a, b) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
    }
}

/// BSON's order of types: null, numbers, strings, objects, arrays, booleans.
fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Object(_) => 4,
        Value::Array(_) => 5,
        Value::Bool(_) => 8,
    }
}

/// A total order over JSON values, MongoDB's (types first, then values).
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (a, b) in x.iter().zip(y) {
                let order = compare(a, b);
                if order != Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y) {
                let order = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| compare(va, vb));
                if order != Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => type_rank(a).cmp(&type_rank(b)),
    }
}

/// The text an `_id` is stored under in the embedded store: canonical JSON, integral numbers
/// written as integers so that `1` and `1.0` are one key (as in MongoDB).
pub fn id_key(id: &Value) -> Result<String, String> {
    match id {
        Value::Array(_) => Err("`_id` cannot be an array".into()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(i.to_string()),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(format!("{}", f as i64)),
            _ => Ok(n.to_string()),
        },
        other => serde_json::to_string(other).map_err(|e| e.to_string()),
    }
}

/// A new ObjectId-style `_id` (24 hex digits: seconds, then random), as MongoDB drivers make.
pub fn new_object_id() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let random = uuid::Uuid::new_v4();
    format!("{seconds:08x}{}", &random.simple().to_string()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_walk_objects_and_arrays() {
        let doc = json!({"a": [{"b": 1}, {"b": 2}, {"c": 3}], "x": {"y": "z"}});
        let found: Vec<_> = path_values(&doc, "a.b").into_iter().flatten().collect();
        assert_eq!(found, vec![&json!(1), &json!(2)]);
        assert_eq!(path_values(&doc, "x.y"), vec![Some(&json!("z"))]);
        assert_eq!(path_values(&doc, "x.q"), vec![None]);
        assert_eq!(get_path(&doc, "a.1.b"), Some(&json!(2)));
    }

    #[test]
    fn order_is_by_type_then_value() {
        let mut values = vec![
            json!(true),
            json!("b"),
            json!(2.5),
            json!(null),
            json!("a"),
            json!(1),
        ];
        values.sort_by(compare);
        assert_eq!(
            values,
            vec![
                json!(null),
                json!(1),
                json!(2.5),
                json!("a"),
                json!("b"),
                json!(true)
            ]
        );
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert_eq!(id_key(&json!(1.0)).ok(), id_key(&json!(1)).ok());
        assert_eq!(new_object_id().len(), 24);
    }
}
