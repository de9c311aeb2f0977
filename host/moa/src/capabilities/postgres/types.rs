//! Spin's PostgreSQL values to and from the wire: `parameter-value` binds as the type PostgreSQL
//! inferred for `$n`, and each result column decodes by its PostgreSQL type into a `db-value`.
//!
//! Binding is what Spin does, plus a few safe widenings (a smaller integer into a wider column,
//! `floating32` into `double precision`, `datetime` into `timestamptz` read as UTC) so a value a Spin
//! app binds on Spin binds here too. Ranges are encoded without client-side normalisation (so a bound
//! at `i32::MAX` is PostgreSQL's to judge, not a host panic).

use super::bindings::spin::postgres4_2_0::postgres::{
    DbDataType, DbValue, Interval, ParameterValue, RangeBoundKind,
};
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use postgres_protocol::types::{self as protocol, RangeBound};
use rust_decimal::Decimal;
use std::error::Error as StdError;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// One bound of a range parameter.
type Bound<T> = Option<(T, RangeBoundKind)>;

/// A `parameter-value` checked and parsed (UUIDs, JSON, decimals, dates), ready to bind.
#[derive(Debug)]
pub enum Param {
    Bool(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    Time(NaiveTime),
    DateTime(NaiveDateTime),
    Timestamp(DateTime<Utc>),
    Uuid(uuid::Uuid),
    Json(serde_json::Value),
    Decimal(Decimal),
    RangeInt32(Bound<i32>, Bound<i32>),
    RangeInt64(Bound<i64>, Bound<i64>),
    RangeDecimal(Bound<Decimal>, Bound<Decimal>),
    ArrayInt32(Vec<Option<i32>>),
    ArrayInt64(Vec<Option<i64>>),
    ArrayDecimal(Vec<Option<Decimal>>),
    ArrayText(Vec<Option<String>>),
    Interval(Interval),
    Null,
}

fn decimal(text: &str) -> Result<Decimal, String> {
    Decimal::from_str_exact(text).map_err(|err| format!("`{text}` is not a decimal: {err}"))
}

fn bound<T, U>(
    bound: Option<(T, RangeBoundKind)>,
    parse: impl Fn(T) -> Result<U, String>,
) -> Result<Bound<U>, String> {
    bound.map(|(v, kind)| Ok((parse(v)?, kind))).transpose()
}

/// Parses one parameter; the message names what is wrong with the value.
pub fn to_param(value: ParameterValue) -> Result<Param, String> {
    Ok(match value {
        ParameterValue::Boolean(v) => Param::Bool(v),
        ParameterValue::Int8(v) => Param::Int8(v),
        ParameterValue::Int16(v) => Param::Int16(v),
        ParameterValue::Int32(v) => Param::Int32(v),
        ParameterValue::Int64(v) => Param::Int64(v),
        ParameterValue::Floating32(v) => Param::Float32(v),
        ParameterValue::Floating64(v) => Param::Float64(v),
        ParameterValue::Str(v) => Param::Text(v),
        ParameterValue::Binary(v) => Param::Bytes(v),
        ParameterValue::Date((y, m, d)) => Param::Date(
            NaiveDate::from_ymd_opt(y, m.into(), d.into())
                .ok_or_else(|| format!("{y}-{m}-{d} is not a date"))?,
        ),
        ParameterValue::Time((h, m, s, ns)) => Param::Time(
            NaiveTime::from_hms_nano_opt(h.into(), m.into(), s.into(), ns)
                .ok_or_else(|| format!("{h}:{m}:{s}.{ns:09} is not a time of day"))?,
        ),
        ParameterValue::Datetime((y, mo, d, h, mi, s, ns)) => Param::DateTime(
            NaiveDate::from_ymd_opt(y, mo.into(), d.into())
                .and_then(|date| date.and_hms_nano_opt(h.into(), mi.into(), s.into(), ns))
                .ok_or_else(|| format!("{y}-{mo}-{d} {h}:{mi}:{s}.{ns:09} is not a date-time"))?,
        ),
        ParameterValue::Timestamp(secs) => Param::Timestamp(
            DateTime::from_timestamp(secs, 0)
                .ok_or_else(|| format!("{secs} s since the epoch is out of range"))?,
        ),
        ParameterValue::Uuid(v) => Param::Uuid(
            uuid::Uuid::parse_str(&v).map_err(|err| format!("`{v}` is not a UUID: {err}"))?,
        ),
        ParameterValue::Jsonb(v) => Param::Json(
            serde_json::from_slice(&v)
                .map_err(|err| format!("the jsonb value is not JSON: {err}"))?,
        ),
        ParameterValue::Decimal(v) => Param::Decimal(decimal(&v)?),
        ParameterValue::RangeInt32((lo, hi)) => Param::RangeInt32(lo, hi),
        ParameterValue::RangeInt64((lo, hi)) => Param::RangeInt64(lo, hi),
        ParameterValue::RangeDecimal((lo, hi)) => Param::RangeDecimal(
            bound(lo, |v: String| decimal(&v))?,
            bound(hi, |v: String| decimal(&v))?,
        ),
        ParameterValue::ArrayInt32(v) => Param::ArrayInt32(v),
        ParameterValue::ArrayInt64(v) => Param::ArrayInt64(v),
        ParameterValue::ArrayDecimal(v) => Param::ArrayDecimal(
            v.iter()
                .map(|item| item.as_deref().map(decimal).transpose())
                .collect::<Result<_, _>>()?,
        ),
        ParameterValue::ArrayStr(v) => Param::ArrayText(v),
        ParameterValue::Interval(v) => Param::Interval(v),
        ParameterValue::DbNull => Param::Null,
    })
}

/// Parses every parameter; the message names the first bad one (`$1`-based, as in the SQL).
pub fn to_params(values: Vec<ParameterValue>) -> Result<Vec<Param>, String> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| to_param(value).map_err(|why| format!("parameter ${}: {why}", i + 1)))
        .collect()
}

fn range_to_sql<T>(
    lower: &Bound<T>,
    upper: &Bound<T>,
    element: impl Fn(&T, &mut BytesMut) -> Result<(), BoxError>,
    out: &mut BytesMut,
) -> Result<IsNull, BoxError> {
    let encode = |bound: &Bound<T>,
                  buf: &mut BytesMut|
     -> Result<RangeBound<postgres_protocol::IsNull>, BoxError> {
        Ok(match bound {
            None => RangeBound::Unbounded,
            Some((value, kind)) => {
                element(value, buf)?;
                match kind {
                    RangeBoundKind::Inclusive => {
                        RangeBound::Inclusive(postgres_protocol::IsNull::No)
                    }
                    RangeBoundKind::Exclusive => {
                        RangeBound::Exclusive(postgres_protocol::IsNull::No)
                    }
                }
            }
        })
    };
    protocol::range_to_sql(|buf| encode(lower, buf), |buf| encode(upper, buf), out)?;
    Ok(IsNull::No)
}

fn wrong_type(param: &Param, ty: &Type) -> BoxError {
    let what = match param {
        Param::Bool(_) => "boolean",
        Param::Int8(_) => "int8",
        Param::Int16(_) => "int16",
        Param::Int32(_) => "int32",
        Param::Int64(_) => "int64",
        Param::Float32(_) => "floating32",
        Param::Float64(_) => "floating64",
        Param::Text(_) => "str",
        Param::Bytes(_) => "binary",
        Param::Date(_) => "date",
        Param::Time(_) => "time",
        Param::DateTime(_) => "datetime",
        Param::Timestamp(_) => "timestamp",
        Param::Uuid(_) => "uuid",
        Param::Json(_) => "jsonb",
        Param::Decimal(_) => "decimal",
        Param::RangeInt32(..) => "range-int32",
        Param::RangeInt64(..) => "range-int64",
        Param::RangeDecimal(..) => "range-decimal",
        Param::ArrayInt32(_) => "array-int32",
        Param::ArrayInt64(_) => "array-int64",
        Param::ArrayDecimal(_) => "array-decimal",
        Param::ArrayText(_) => "array-str",
        Param::Interval(_) => "interval",
        Param::Null => "db-null",
    };
    format!("a {what} value cannot be bound where PostgreSQL expects `{ty}`").into()
}

/// Binds `value` if its Rust type takes `ty`, else says which WIT value met which column type.
fn checked<T: ToSql>(
    value: &T,
    param: &Param,
    ty: &Type,
    out: &mut BytesMut,
) -> Result<IsNull, BoxError> {
    if T::accepts(ty) {
        value.to_sql(ty, out)
    } else {
        Err(wrong_type(param, ty))
    }
}

/// Any integer parameter into any integer column it fits (Spin binds each only to its own width).
fn integer(value: i64, param: &Param, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let out_of_range = || -> BoxError { format!("{value} is out of range for `{ty}`").into() };
    match *ty {
        Type::INT2 => i16::try_from(value)
            .map_err(|_| out_of_range())?
            .to_sql(ty, out),
        Type::INT4 => i32::try_from(value)
            .map_err(|_| out_of_range())?
            .to_sql(ty, out),
        Type::INT8 => value.to_sql(ty, out),
        _ => Err(wrong_type(param, ty)),
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => checked(v, self, ty, out),
            // `"char"` (PostgreSQL's one-byte type) is what Spin binds `int8` to.
            Param::Int8(v) if *ty == Type::CHAR => v.to_sql(ty, out),
            Param::Int8(v) => integer(i64::from(*v), self, ty, out),
            Param::Int16(v) => integer(i64::from(*v), self, ty, out),
            Param::Int32(v) => integer(i64::from(*v), self, ty, out),
            Param::Int64(v) => integer(*v, self, ty, out),
            Param::Float32(v) if *ty == Type::FLOAT8 => f64::from(*v).to_sql(ty, out),
            Param::Float32(v) => checked(v, self, ty, out),
            Param::Float64(v) => checked(v, self, ty, out),
            // JSON text as it is: PostgreSQL checks it (jsonb's binary form is a version byte, then the text).
            Param::Text(v) if *ty == Type::JSON => {
                out.put_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            Param::Text(v) if *ty == Type::JSONB => {
                out.put_u8(1);
                out.put_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            Param::Text(v) => checked(v, self, ty, out),
            Param::Bytes(v) => checked(v, self, ty, out),
            Param::Date(v) => checked(v, self, ty, out),
            Param::Time(v) => checked(v, self, ty, out),
            // The WIT says date-times are UTC: so into `timestamptz` they go as UTC.
            Param::DateTime(v) if *ty == Type::TIMESTAMPTZ => v.and_utc().to_sql(ty, out),
            Param::DateTime(v) => checked(v, self, ty, out),
            Param::Timestamp(v) if *ty == Type::TIMESTAMP => v.naive_utc().to_sql(ty, out),
            Param::Timestamp(v) => checked(v, self, ty, out),
            Param::Uuid(v) => checked(v, self, ty, out),
            Param::Json(v) => checked(v, self, ty, out),
            Param::Decimal(v) => checked(v, self, ty, out),
            Param::RangeInt32(lo, hi) if *ty == Type::INT4_RANGE => range_to_sql(
                lo,
                hi,
                |v, buf| {
                    protocol::int4_to_sql(*v, buf);
                    Ok(())
                },
                out,
            ),
            Param::RangeInt64(lo, hi) if *ty == Type::INT8_RANGE => range_to_sql(
                lo,
                hi,
                |v, buf| {
                    protocol::int8_to_sql(*v, buf);
                    Ok(())
                },
                out,
            ),
            Param::RangeDecimal(lo, hi) if *ty == Type::NUM_RANGE => range_to_sql(
                lo,
                hi,
                |v, buf| v.to_sql(&Type::NUMERIC, buf).map(|_| ()),
                out,
            ),
            Param::ArrayInt32(v) => checked(v, self, ty, out),
            Param::ArrayInt64(v) => checked(v, self, ty, out),
            Param::ArrayDecimal(v) => checked(v, self, ty, out),
            Param::ArrayText(v) => checked(v, self, ty, out),
            Param::Interval(v) if *ty == Type::INTERVAL => {
                out.put_i64(v.micros);
                out.put_i32(v.days);
                out.put_i32(v.months);
                Ok(IsNull::No)
            }
            _ => Err(wrong_type(self, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Every parameter decides in `to_sql`, against the type PostgreSQL inferred for it.
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.to_sql(ty, out)
    }
}

/// A range column's value: each bound with its kind; empty and unbounded both read as `(none, none)`.
struct RangeValue<T>(Bound<T>, Bound<T>);

impl<'a, T: FromSql<'a>> RangeValue<T> {
    fn decode(element: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bound = |b: RangeBound<Option<&'a [u8]>>| -> Result<Bound<T>, BoxError> {
            Ok(match b {
                RangeBound::Inclusive(Some(v)) => {
                    Some((T::from_sql(element, v)?, RangeBoundKind::Inclusive))
                }
                RangeBound::Exclusive(Some(v)) => {
                    Some((T::from_sql(element, v)?, RangeBoundKind::Exclusive))
                }
                RangeBound::Inclusive(None)
                | RangeBound::Exclusive(None)
                | RangeBound::Unbounded => None,
            })
        };
        match protocol::range_from_sql(raw)? {
            protocol::Range::Empty => Ok(RangeValue(None, None)),
            protocol::Range::Nonempty(lo, hi) => Ok(RangeValue(bound(lo)?, bound(hi)?)),
        }
    }
}

/// The raw bytes of a column moa has no WIT type for (`unsupported`).
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn interval(raw: &[u8]) -> Result<Interval, BoxError> {
    let bytes: [u8; 16] = raw
        .try_into()
        .map_err(|_| format!("an interval is 16 bytes, not {}", raw.len()))?;
    let (micros, rest) = bytes.split_at(8);
    let (days, months) = rest.split_at(4);
    Ok(Interval {
        micros: i64::from_be_bytes(micros.try_into()?),
        days: i32::from_be_bytes(days.try_into()?),
        months: i32::from_be_bytes(months.try_into()?),
    })
}

/// The WIT data type of a column of PostgreSQL type `ty`.
pub fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::UUID => DbDataType::Uuid,
        Type::JSON | Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_RANGE => DbDataType::RangeInt32,
        Type::INT8_RANGE => DbDataType::RangeInt64,
        Type::NUM_RANGE => DbDataType::RangeDecimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::NUMERIC_ARRAY => DbDataType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_string()),
    }
}

fn date_tuple(d: NaiveDate) -> (i32, u8, u8) {
    // Month and day always fit a byte.
    (d.year(), d.month() as u8, d.day() as u8)
}

fn time_tuple(t: NaiveTime) -> (u8, u8, u8, u32) {
    (
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.nanosecond(),
    )
}

fn datetime_tuple(v: NaiveDateTime) -> (i32, u8, u8, u8, u8, u8, u32) {
    let (y, mo, d) = date_tuple(v.date());
    let (h, mi, s, ns) = time_tuple(v.time());
    (y, mo, d, h, mi, s, ns)
}

fn get<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    wrap: impl FnOnce(T) -> DbValue,
) -> Result<DbValue, tokio_postgres::Error> {
    Ok(row
        .try_get::<_, Option<T>>(i)?
        .map_or(DbValue::DbNull, wrap))
}

/// Column `i` of `row` as a `db-value`; a value moa cannot decode is an error naming the column.
pub fn decode(row: &Row, i: usize) -> Result<DbValue, String> {
    let column = &row.columns()[i];
    let ty = column.type_();
    let value = match *ty {
        Type::BOOL => get(row, i, DbValue::Boolean),
        Type::INT2 => get(row, i, DbValue::Int16),
        Type::INT4 => get(row, i, DbValue::Int32),
        Type::INT8 => get(row, i, DbValue::Int64),
        Type::FLOAT4 => get(row, i, DbValue::Floating32),
        Type::FLOAT8 => get(row, i, DbValue::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get(row, i, DbValue::Str),
        Type::BYTEA => get(row, i, DbValue::Binary),
        Type::DATE => get(row, i, |v| DbValue::Date(date_tuple(v))),
        Type::TIME => get(row, i, |v| DbValue::Time(time_tuple(v))),
        Type::TIMESTAMP => get(row, i, |v| DbValue::Datetime(datetime_tuple(v))),
        // Spin cannot read `timestamptz` at all; the WIT says date-times are UTC, so moa gives UTC.
        Type::TIMESTAMPTZ => get(row, i, |v: DateTime<Utc>| {
            DbValue::Datetime(datetime_tuple(v.naive_utc()))
        }),
        Type::UUID => get(row, i, |v: uuid::Uuid| DbValue::Uuid(v.to_string())),
        Type::JSON | Type::JSONB => get(row, i, |v: serde_json::Value| {
            DbValue::Jsonb(v.to_string().into_bytes())
        }),
        Type::NUMERIC => get(row, i, |v: Decimal| DbValue::Decimal(v.to_string())),
        Type::INT4_ARRAY => get(row, i, DbValue::ArrayInt32),
        Type::INT8_ARRAY => get(row, i, DbValue::ArrayInt64),
        Type::NUMERIC_ARRAY => get(row, i, |v: Vec<Option<Decimal>>| {
            DbValue::ArrayDecimal(v.into_iter().map(|d| d.map(|d| d.to_string())).collect())
        }),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => {
            get(row, i, DbValue::ArrayStr)
        }
        _ => match row.try_get::<_, Option<Raw>>(i) {
            Ok(None) => Ok(DbValue::DbNull),
            Ok(Some(Raw(raw))) => {
                return raw_value(ty, &raw)
                    .map_err(|why| format!("column `{}` ({ty}): {why}", column.name()));
            }
            Err(err) => Err(err),
        },
    };
    value.map_err(|err| {
        let why = err.source().map_or(err.to_string(), |e| e.to_string());
        format!("column `{}` ({ty}): {why}", column.name())
    })
}

/// Types decoded from their binary form here (postgres-types has no impl moa can use as is).
fn raw_value(ty: &Type, raw: &[u8]) -> Result<DbValue, BoxError> {
    Ok(match *ty {
        Type::INT4_RANGE => {
            let RangeValue(lo, hi) = RangeValue::<i32>::decode(&Type::INT4, raw)?;
            DbValue::RangeInt32((lo, hi))
        }
        Type::INT8_RANGE => {
            let RangeValue(lo, hi) = RangeValue::<i64>::decode(&Type::INT8, raw)?;
            DbValue::RangeInt64((lo, hi))
        }
        Type::NUM_RANGE => {
            let RangeValue(lo, hi) = RangeValue::<Decimal>::decode(&Type::NUMERIC, raw)?;
            let text = |b: Bound<Decimal>| b.map(|(v, kind)| (v.to_string(), kind));
            DbValue::RangeDecimal((text(lo), text(hi)))
        }
        Type::INTERVAL => DbValue::Interval(interval(raw)?),
        _ => DbValue::Unsupported(raw.to_vec()),
    })
}

/// A rough size of a value in memory, for the result-size limit.
pub fn size_of(value: &DbValue) -> usize {
    const FIXED: usize = 32;
    FIXED
        + match value {
            DbValue::Str(s) | DbValue::Uuid(s) | DbValue::Decimal(s) => s.len(),
            DbValue::Binary(b) | DbValue::Jsonb(b) | DbValue::Unsupported(b) => b.len(),
            DbValue::ArrayInt32(v) => v.len() * 8,
            DbValue::ArrayInt64(v) => v.len() * 16,
            DbValue::ArrayDecimal(v) | DbValue::ArrayStr(v) => v
                .iter()
                .map(|s| FIXED + s.as_ref().map_or(0, String::len))
                .sum(),
            _ => 0,
        }
}
