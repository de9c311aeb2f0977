//! How the embedded store narrows a filter in SQL before moa's own code decides: by `_id`, by an
//! equality or a range on a declared index's first key; anything else scans the collection.

use super::super::IndexSpec;
use super::super::query::Filter;
use super::super::values::id_key;
use rusqlite::types::Value as SqlValue;
use serde_json::Value;
use std::cmp::Ordering;

/// The most `_id` values a filter may list and still be looked up by key (SQLite binds at most
/// 32,766 parameters; a longer list scans the collection).
const MAX_ID_LOOKUPS: usize = 4096;

/// The SQL expression an index key (and a lookup by it) uses: a missing field and `null` index
/// the same, as in MongoDB.
pub fn index_expression(path: &str) -> String {
    format!("IFNULL(json_extract(body, '$.{path}'), x'00')")
}

/// The SQLite name of a declared index.
pub fn sql_index_name(spec: &IndexSpec) -> String {
    format!("ix_{}_{}", spec.collection, spec.name)
}

/// A JSON scalar as the value SQLite's `json_extract` gives for it (booleans are 1 and 0, a
/// missing field or `null` the index's `x'00'`).
pub fn sql_value(value: Option<&Value>) -> SqlValue {
    match value {
        None | Some(Value::Null) => SqlValue::Blob(vec![0]),
        Some(Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Some(Value::String(s)) => SqlValue::Text(s.clone()),
        Some(other) => SqlValue::Text(other.to_string()),
    }
}

/// A narrowed scan: the SQL after `FROM documents`, and its arguments.
pub struct Plan {
    pub sql: String,
    pub args: Vec<SqlValue>,
    /// Whether the scan reads only rows found by key (an `_id` or an index), not the collection.
    pub keyed: bool,
}

/// The narrowest scan the filter allows. The collection is a literal (names are checked: letters,
/// digits, `_`, `-`, `.`) so that SQLite can use the collection's partial indexes.
pub fn plan(collection: &str, indexes: &[IndexSpec], filter: &Filter) -> Plan {
    let base = format!("WHERE collection = '{collection}'");
    if let Some(keys) = id_keys(filter) {
        let marks = (1..=keys.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(",");
        return Plan {
            sql: format!("{base} AND id IN ({marks}) ORDER BY seq"),
            args: keys.into_iter().map(SqlValue::Text).collect(),
            keyed: true,
        };
    }
    let first_key = |path: &str| {
        indexes
            .iter()
            .filter(|index| index.collection == collection)
            .find(|index| index.keys.first().is_some_and(|(first, _)| first == path))
    };
    let equalities = filter.equalities();
    if let Some((index, value)) = equalities.iter().find_map(|(path, value)| {
        (value.is_string() || value.is_number())
            .then(|| first_key(path).map(|index| (index, *value)))
            .flatten()
    }) {
        let path = &index.keys[0].0;
        return Plan {
            sql: format!(
                "INDEXED BY \"{}\" {base} AND {} = ?1 ORDER BY seq",
                sql_index_name(index),
                index_expression(path)
            ),
            args: vec![sql_value(Some(value))],
            keyed: true,
        };
    }
    // A range on an index's first key: the bounds, and a fence that keeps the scan on the bound's
    // type (numbers sort below text, text below the blobs of null and missing).
    let bounds = filter.bounds();
    if let Some(index) = bounds.iter().find_map(|(path, ..)| first_key(path)) {
        let path = &index.keys[0].0;
        let expression = index_expression(path);
        let mut conditions = Vec::new();
        let mut args = Vec::new();
        let mut fenced = false;
        for (bound_path, direction, inclusive, value) in &bounds {
            if bound_path != path {
                continue;
            }
            args.push(sql_value(Some(value)));
            conditions.push(format!(
                "{expression} {} ?{}",
                comparison(*direction, *inclusive),
                args.len()
            ));
            if !fenced {
                fenced = true;
                conditions.push(if value.is_number() {
                    format!("{expression} < ''")
                } else {
                    format!("{expression} >= '' AND {expression} < x''")
                });
            }
        }
        return Plan {
            sql: format!(
                "INDEXED BY \"{}\" {base} AND {} ORDER BY seq",
                sql_index_name(index),
                conditions.join(" AND ")
            ),
            args,
            keyed: true,
        };
    }
    Plan {
        sql: format!("{base} ORDER BY seq"),
        args: Vec::new(),
        keyed: false,
    }
}

/// The SQL operator of a filter's range bound (`$gt`, `$gte`, `$lt`, `$lte`).
fn comparison(direction: Ordering, inclusive: bool) -> &'static str {
    match (direction, inclusive) {
        (Ordering::Greater, false) => ">",
        (Ordering::Greater, true) => ">=",
        (Ordering::Less, false) => "<",
        _ => "<=",
    }
}

/// A scan in sort order: one SQL query per type class of the sort field, in MongoDB's order of
/// types (null and missing, numbers, strings, booleans; reversed for a descending sort), each
/// walking the index in order, so that a sorted find with a limit stops early.
pub struct SortedPlan {
    pub passes: Vec<Plan>,
    /// The path of the sort's first key (rows are in its order; later keys only break ties).
    pub path: String,
}

/// The sorted scan for a sort whose first key is a declared index's first key, when the filter
/// has no `_id` or index equality (those read few rows and are sorted afterwards).
pub fn sorted_plan(
    collection: &str,
    indexes: &[IndexSpec],
    filter: &Filter,
    sort: &[(String, bool)],
) -> Option<SortedPlan> {
    let (path, ascending) = sort.first()?;
    let index = indexes.iter().find(|index| {
        index.collection == collection && index.keys.first().is_some_and(|(first, _)| first == path)
    })?;
    let equality_on_an_index = filter.equalities().iter().any(|(p, v)| {
        (v.is_string() || v.is_number())
            && indexes.iter().any(|i| {
                i.collection == collection && i.keys.first().is_some_and(|(first, _)| first == p)
            })
    });
    if id_keys(filter).is_some() || equality_on_an_index {
        return None;
    }
    let expression = index_expression(path);
    let kind = format!("json_type(body, '$.{path}')");
    // The filter's ranges on the sort field, in every pass (a pass of another type finds nothing).
    let mut range = String::new();
    let mut args = Vec::new();
    for (bound_path, direction, inclusive, value) in filter.bounds() {
        if bound_path != path {
            continue;
        }
        args.push(sql_value(Some(value)));
        range.push_str(&format!(
            " AND {expression} {} ?{}",
            comparison(direction, inclusive),
            args.len()
        ));
    }
    let classes = [
        format!("{expression} = x'00'"),
        format!("{expression} < '' AND {kind} NOT IN ('true', 'false')"),
        format!("{expression} >= '' AND {expression} < x''"),
        format!("{expression} >= 0 AND {expression} <= 1 AND {kind} IN ('true', 'false')"),
    ];
    let order = if *ascending {
        format!("ORDER BY {expression}, seq")
    } else {
        format!("ORDER BY {expression} DESC, seq")
    };
    let mut passes: Vec<Plan> = classes
        .iter()
        .map(|class| Plan {
            sql: format!(
                "INDEXED BY \"{}\" WHERE collection = '{collection}' AND {class}{range} {order}",
                sql_index_name(index)
            ),
            args: args.clone(),
            keyed: true,
        })
        .collect();
    if !ascending {
        passes.reverse();
    }
    Some(SortedPlan {
        passes,
        path: path.clone(),
    })
}

/// The `_id` keys every match must have one of, when a top-level `_id` condition lists them
/// (`$eq` or `$in` over scalars, each convertible to a key).
pub fn id_keys(filter: &Filter) -> Option<Vec<String>> {
    let (_, values) = filter
        .required_values()
        .into_iter()
        .filter(|(path, values)| *path == "_id" && values.len() <= MAX_ID_LOOKUPS)
        .min_by_key(|(_, values)| values.len())?;
    values.into_iter().map(|v| id_key(v).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index(collection: &str, key: &str) -> IndexSpec {
        IndexSpec {
            store: "default".into(),
            collection: collection.into(),
            keys: vec![(key.into(), true)],
            unique: false,
            name: key.into(),
        }
    }

    fn filter(value: Value) -> Filter {
        Filter::parse(&value).expect("filter")
    }

    #[test]
    fn a_range_on_an_indexed_field_is_a_fenced_index_scan() {
        let indexes = [index("orders", "deadline_at_ms")];
        let plan = plan(
            "orders",
            &indexes,
            &filter(json!({ "deadline_at_ms": { "$lt": 5 } })),
        );
        assert!(plan.keyed);
        assert!(plan.sql.contains("INDEXED BY \"ix_orders_deadline_at_ms\""));
        assert!(plan.sql.contains("< ?1"), "{}", plan.sql);
        assert!(plan.sql.contains("< ''"), "{}", plan.sql);
        assert_eq!(plan.args, vec![SqlValue::Integer(5)]);

        let text = super::plan(
            "orders",
            &indexes,
            &filter(json!({ "deadline_at_ms": { "$gte": "a", "$lt": "b" } })),
        );
        assert!(text.sql.contains(">= ''") && text.sql.contains("< x''"));
        assert_eq!(text.args.len(), 2);
    }

    #[test]
    fn ids_come_before_indexes_and_unindexed_filters_scan() {
        let indexes = [index("orders", "customer")];
        let by_id = plan(
            "orders",
            &indexes,
            &filter(json!({ "_id": { "$in": ["a", "b"] }, "customer": "c" })),
        );
        assert!(by_id.sql.contains("id IN (?1,?2)"));
        let scan = plan("orders", &indexes, &filter(json!({ "state": "open" })));
        assert!(!scan.keyed);
        let other_collection = plan("items", &indexes, &filter(json!({ "customer": "c" })));
        assert!(!other_collection.keyed);
    }
}
