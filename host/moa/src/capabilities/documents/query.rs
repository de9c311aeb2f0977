//! MongoDB's filter language as moa runs it: parsed once into a [`Filter`] (an operator moa does not
//! run is an error on every backend), evaluated here for the embedded store, checked for MongoDB.

use super::values::{compare, path_values, values_equal};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    /// `{path: {op: value, ...}}` or `{path: value}` (equality).
    Field {
        path: String,
        tests: Vec<Test>,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(Value),
    Ne(Value),
    Cmp(Ordering, bool, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Not(Vec<Test>),
}

impl Filter {
    /// The filter that matches everything (`{}`).
    pub fn all() -> Self {
        Filter {
            conditions: Vec::new(),
        }
    }

    /// Parses a filter document, or says what is wrong with it.
    pub fn parse(filter: &Value) -> Result<Self, String> {
        let Value::Object(fields) = filter else {
            return Err("a filter is a JSON object, e.g. {\"status\": \"open\"}".into());
        };
        let mut conditions = Vec::with_capacity(fields.len());
        for (key, value) in fields {
            conditions.push(match key.as_str() {
                "$and" => Condition::And(sub_filters(key, value)?),
                "$or" => Condition::Or(sub_filters(key, value)?),
                "$nor" => Condition::Nor(sub_filters(key, value)?),
                op if op.starts_with('$') => {
                    return Err(format!(
                        "unsupported top-level operator `{op}` (moa runs $and, $or, $nor)"
                    ));
                }
                path => {
                    check_path(path)?;
                    Condition::Field {
                        path: path.to_string(),
                        tests: parse_tests(path, value)?,
                    }
                }
            });
        }
        Ok(Filter { conditions })
    }

    /// Whether `document` matches.
    pub fn matches(&self, document: &Value) -> bool {
        self.conditions.iter().all(|c| c.matches(document))
    }

    /// `path -> value` for top-level equality conditions (for index lookups and upserts).
    pub fn equalities(&self) -> Vec<(&str, &Value)> {
        let mut out = Vec::new();
        for condition in &self.conditions {
            match condition {
                Condition::Field { path, tests } => {
                    for test in tests {
                        if let Test::Eq(value) = test
                            && !value.is_object()
                            && !value.is_array()
                        {
                            out.push((path.as_str(), value));
                        }
                    }
                }
                Condition::And(filters) => {
                    for filter in filters {
                        out.extend(filter.equalities());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Top-level conditions every match meets as "`path` equals one of `values`" (`$eq`, or `$in`
    /// over scalars; `null`, arrays and objects left out), for lookups in an index of values.
    pub fn required_values(&self) -> Vec<(&str, Vec<&Value>)> {
        let scalar = |v: &Value| !(v.is_null() || v.is_object() || v.is_array());
        let mut out = Vec::new();
        for condition in &self.conditions {
            match condition {
                Condition::Field { path, tests } => {
                    for test in tests {
                        match test {
                            Test::Eq(value) if scalar(value) => {
                                out.push((path.as_str(), vec![value]))
                            }
                            Test::In(values) if values.iter().all(scalar) => {
                                out.push((path.as_str(), values.iter().collect()))
                            }
                            _ => {}
                        }
                    }
                }
                Condition::And(filters) => {
                    for filter in filters {
                        out.extend(filter.required_values());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Top-level range conditions every match meets (`$gt`, `$gte`, `$lt`, `$lte` on a number or a
    /// string): `(path, Greater or Less, inclusive, bound)`, for range scans of an index.
    pub fn bounds(&self) -> Vec<(&str, Ordering, bool, &Value)> {
        let mut out = Vec::new();
        for condition in &self.conditions {
            match condition {
                Condition::Field { path, tests } => {
                    for test in tests {
                        if let Test::Cmp(direction, inclusive, value) = test
                            && (value.is_number() || value.is_string())
                        {
                            out.push((path.as_str(), *direction, *inclusive, value));
                        }
                    }
                }
                Condition::And(filters) => {
                    for filter in filters {
                        out.extend(filter.bounds());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The fields an upsert copies from the filter: top-level equalities (objects included).
    pub fn upsert_seed(&self) -> Map<String, Value> {
        let mut seed = Map::new();
        self.collect_seed(&mut seed);
        seed
    }

    fn collect_seed(&self, seed: &mut Map<String, Value>) {
        for condition in &self.conditions {
            match condition {
                Condition::Field { path, tests } => {
                    for test in tests {
                        if let Test::Eq(value) = test {
                            super::update::set_path(seed, path, value.clone());
                        }
                    }
                }
                Condition::And(filters) => filters.iter().for_each(|f| f.collect_seed(seed)),
                _ => {}
            }
        }
    }
}

fn sub_filters(op: &str, value: &Value) -> Result<Vec<Filter>, String> {
    match value {
        Value::Array(items) if !items.is_empty() => items.iter().map(Filter::parse).collect(),
        _ => Err(format!("{op} takes a non-empty array of filters")),
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("`{path}` is not a field path"));
    }
    Ok(())
}

/// `value` is an operator object when its keys start with `$` (then all of them must).
fn parse_tests(path: &str, value: &Value) -> Result<Vec<Test>, String> {
    let Value::Object(ops) = value else {
        return Ok(vec![Test::Eq(value.clone())]);
    };
    let dollar = ops.keys().filter(|k| k.starts_with('$')).count();
    if dollar == 0 {
        return Ok(vec![Test::Eq(value.clone())]);
    }
    if dollar != ops.len() {
        return Err(format!(
            "`{path}` mixes operators and fields; use either {{\"$gt\": 1}} or an exact document"
        ));
    }
    ops.iter()
        .map(|(op, arg)| parse_test(path, op, arg))
        .collect()
}

fn parse_test(path: &str, op: &str, arg: &Value) -> Result<Test, String> {
    let list = |arg: &Value| match arg {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(format!("`{path}`: {op} takes an array")),
    };
    Ok(match op {
        "$eq" => Test::Eq(arg.clone()),
        "$ne" => Test::Ne(arg.clone()),
        "$gt" => Test::Cmp(Ordering::Greater, false, arg.clone()),
        "$gte" => Test::Cmp(Ordering::Greater, true, arg.clone()),
        "$lt" => Test::Cmp(Ordering::Less, false, arg.clone()),
        "$lte" => Test::Cmp(Ordering::Less, true, arg.clone()),
        "$in" => Test::In(list(arg)?),
        "$nin" => Test::Nin(list(arg)?),
        "$exists" => match arg {
            Value::Bool(b) => Test::Exists(*b),
            Value::Number(n) => Test::Exists(n.as_f64() != Some(0.0)),
            _ => return Err(format!("`{path}`: $exists takes true or false")),
        },
        "$not" => match arg {
            Value::Object(_) => Test::Not(parse_tests(path, arg)?),
            _ => return Err(format!("`{path}`: $not takes an operator object")),
        },
        other => {
            return Err(format!(
                "unsupported operator `{other}` on `{path}` (moa runs $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $not)"
            ));
        }
    })
}

impl Condition {
    fn matches(&self, document: &Value) -> bool {
        match self {
            Condition::Field { path, tests } => {
                let found = path_values(document, path);
                tests.iter().all(|t| t.matches(&found))
            }
            Condition::And(filters) => filters.iter().all(|f| f.matches(document)),
            Condition::Or(filters) => filters.iter().any(|f| f.matches(document)),
            Condition::Nor(filters) => !filters.iter().any(|f| f.matches(document)),
        }
    }
}

impl Test {
    /// `found` holds what the path reaches (`None` where it is missing), as MongoDB walks arrays.
    fn matches(&self, found: &[Option<&Value>]) -> bool {
        match self {
            Test::Eq(v) => equals_any(found, v),
            Test::Ne(v) => !equals_any(found, v),
            Test::In(vs) => vs.iter().any(|v| equals_any(found, v)),
            Test::Nin(vs) => !vs.iter().any(|v| equals_any(found, v)),
            Test::Exists(want) => found.iter().any(Option::is_some) == *want,
            Test::Not(tests) => !tests.iter().all(|t| t.matches(found)),
            Test::Cmp(direction, or_equal, v) => found.iter().flatten().any(|value| {
                let check = |x: &Value| match compare_same_type(x, v) {
                    Some(Ordering::Equal) => *or_equal,
                    Some(order) => order == *direction,
                    None => false,
                };
                match value {
                    Value::Array(items) if !v.is_array() => items.iter().any(check),
                    other => check(other),
                }
            }),
        }
    }
}

/// Equality as MongoDB's `{path: v}`: a value equal to `v`, an array holding `v`, and for `null`
/// also a missing field.
fn equals_any(found: &[Option<&Value>], v: &Value) -> bool {
    if found.is_empty() {
        return v.is_null();
    }
    found.iter().any(|item| match item {
        None => v.is_null(),
        Some(value) => {
            values_equal(value, v)
                || matches!(value, Value::Array(items) if items.iter().any(|x| values_equal(x, v)))
        }
    })
}

/// Range comparisons only hold between values of one type bracket (numbers with numbers, strings
/// with strings...), as in MongoDB.
fn compare_same_type(a: &Value, b: &Value) -> Option<Ordering> {
    let bracket = |v: &Value| match v {
        Value::Null => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Object(_) => 3,
        Value::Array(_) => 4,
        Value::Bool(_) => 5,
    };
    (bracket(a) == bracket(b)).then(|| compare(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(filter: Value, doc: Value) -> bool {
        Filter::parse(&filter).expect("filter parses").matches(&doc)
    }

    #[test]
    fn equality_walks_arrays_and_nested_paths() {
        assert!(m(json!({"a": 1}), json!({"a": 1.0})));
        assert!(m(json!({"tags": "x"}), json!({"tags": ["y", "x"]})));
        assert!(m(json!({"a.b": 2}), json!({"a": [{"b": 1}, {"b": 2}]})));
        assert!(m(json!({"a.1": "y"}), json!({"a": ["x", "y"]})));
        assert!(!m(json!({"a.b": 3}), json!({"a": {"b": 2}})));
        assert!(m(json!({"missing": null}), json!({"a": 1})));
        assert!(!m(json!({"a": null}), json!({"a": 1})));
    }

    #[test]
    fn comparisons_stay_within_a_type() {
        assert!(m(json!({"n": {"$gt": 1, "$lte": 3}}), json!({"n": 3})));
        assert!(!m(json!({"n": {"$gt": 1}}), json!({"n": "5"})));
        assert!(m(json!({"n": {"$lt": 2}}), json!({"n": [5, 1]})));
        assert!(m(json!({"s": {"$gte": "b"}}), json!({"s": "c"})));
    }

    #[test]
    fn sets_exists_and_logic() {
        assert!(m(json!({"s": {"$in": ["a", "b"]}}), json!({"s": "b"})));
        assert!(m(json!({"s": {"$nin": ["a"]}}), json!({"t": 1})));
        assert!(m(json!({"s": {"$exists": false}}), json!({"t": 1})));
        assert!(m(json!({"s": {"$ne": 1}}), json!({"t": 1})));
        assert!(m(
            json!({"$or": [{"a": 1}, {"b": 2}], "c": {"$exists": true}}),
            json!({"b": 2, "c": 0})
        ));
        assert!(!m(json!({"$nor": [{"a": 1}]}), json!({"a": 1})));
        assert!(m(json!({"n": {"$not": {"$gt": 5}}}), json!({"n": 3})));
    }

    #[test]
    fn unsupported_operators_are_errors() {
        for bad in [
            json!({"a": {"$regex": "x"}}),
            json!({"$where": "1"}),
            json!({"a": {"$gt": 1, "b": 2}}),
            json!([1]),
            json!({"$or": []}),
            json!({"a..b": 1}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad} should be refused");
        }
    }
}
