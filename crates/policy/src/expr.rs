//! Retention expressions: the `retain = ...` of an obligation, parsed and evaluated.
//!
//! Semantics (see `docs/policy.md`), designed so that what is unknown can never shorten
//! retention:
//! - `{ years = N, from = [a, b] }`: N years after the *latest known* of the anchors; pending
//!   while none is known.
//! - `{ age = N }` / `{ age-of-majority-plus = N }`: the patient's birthday; pending while the
//!   birth date is unknown.
//! - `{ later = [...] }`: the latest; pending if any part is pending (it could be later still),
//!   indefinite if any part is.
//! - `{ first = [...] }`: the earliest *known* date. A pending part is ignored when another part
//!   has a date, because the true earliest date can only be earlier than the known one, so
//!   keeping until the known one is never premature. Indefinite parts never win.
//! - `{ if-minor = X, else = Y, at = anchor }`: X when the patient was under the age of majority
//!   on the anchor date, Y otherwise; when that cannot be known, the later of X and Y.

use chrono::{Datelike, NaiveDate};
use retain_model::{Anchor, Period, add_period};

/// A parsed retention expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Indefinite,
    After {
        period: Period,
        from: Vec<Anchor>,
    },
    Age {
        years: u32,
    },
    MajorityPlus {
        years: u32,
    },
    Later(Vec<Expr>),
    First(Vec<Expr>),
    IfMinor {
        at: Anchor,
        minor: Box<Expr>,
        adult: Box<Expr>,
    },
}

/// The value of an expression for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    Date(NaiveDate),
    Indefinite,
    /// Waiting for the anchors in this bit set (bit = `Anchor as u8`).
    Pending(u16),
}

/// The anchor dates known for one record, and the jurisdiction's age of majority.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Anchors {
    pub dates: [Option<NaiveDate>; Anchor::ALL.len()],
    pub majority: u32,
}

impl Anchors {
    pub fn get(&self, a: Anchor) -> Option<NaiveDate> {
        self.dates[a as usize]
    }

    /// Sets an anchor to the later of its current value and `date`.
    pub fn raise(&mut self, a: Anchor, date: Option<NaiveDate>) {
        if let Some(d) = date {
            let slot = &mut self.dates[a as usize];
            *slot = Some(slot.map_or(d, |cur| cur.max(d)));
        }
    }
}

fn bit(a: Anchor) -> u16 {
    1 << (a as u16)
}

/// The anchors in a pending bit set.
pub(crate) fn pending_anchors(bits: u16) -> impl Iterator<Item = Anchor> {
    Anchor::ALL.into_iter().filter(move |a| bits & bit(*a) != 0)
}

fn birthday(birth: NaiveDate, age: u32) -> Option<NaiveDate> {
    add_period(birth, Period::years(age))
}

impl Expr {
    pub fn eval(&self, ctx: &Anchors) -> Value {
        match self {
            Expr::Indefinite => Value::Indefinite,
            Expr::After { period, from } => {
                let latest = from.iter().filter_map(|a| ctx.get(*a)).max();
                match latest {
                    Some(d) => add_period(d, *period).map_or(Value::Indefinite, Value::Date),
                    None => Value::Pending(from.iter().fold(0, |acc, a| acc | bit(*a))),
                }
            }
            Expr::Age { years } => match ctx.get(Anchor::Birth) {
                Some(b) => birthday(b, *years).map_or(Value::Indefinite, Value::Date),
                None => Value::Pending(bit(Anchor::Birth)),
            },
            Expr::MajorityPlus { years } => match ctx.get(Anchor::Birth) {
                Some(b) => birthday(b, ctx.majority + years).map_or(Value::Indefinite, Value::Date),
                None => Value::Pending(bit(Anchor::Birth)),
            },
            Expr::Later(parts) => later(parts.iter().map(|p| p.eval(ctx))),
            Expr::First(parts) => first(parts.iter().map(|p| p.eval(ctx))),
            Expr::IfMinor { at, minor, adult } => match (ctx.get(Anchor::Birth), ctx.get(*at)) {
                (Some(b), Some(on)) => {
                    if age_on(b, on) < ctx.majority {
                        minor.eval(ctx)
                    } else {
                        adult.eval(ctx)
                    }
                }
                _ => later([minor.eval(ctx), adult.eval(ctx)]),
            },
        }
    }

    /// The expression in words, for explanations.
    pub fn describe(&self) -> String {
        match self {
            Expr::Indefinite => "indefinite".to_owned(),
            Expr::After { period, from } => {
                let names: Vec<&str> = from.iter().map(|a| a.as_str()).collect();
                if names.len() == 1 {
                    format!("{} + {period}", names[0])
                } else {
                    format!("latest of ({}) + {period}", names.join(", "))
                }
            }
            Expr::Age { years } => format!("patient age {years}"),
            Expr::MajorityPlus { years: 0 } => "patient reaches majority".to_owned(),
            Expr::MajorityPlus { years } => format!("age of majority + {years} years"),
            Expr::Later(parts) => format!("later of: {}", join(parts)),
            Expr::First(parts) => format!("first of: {}", join(parts)),
            Expr::IfMinor { at, minor, adult } => format!(
                "if a minor at {}: [{}], otherwise: [{}]",
                at.as_str(),
                minor.describe(),
                adult.describe()
            ),
        }
    }
}

fn join(parts: &[Expr]) -> String {
    parts
        .iter()
        .map(Expr::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whole years between `birth` and `on`.
fn age_on(birth: NaiveDate, on: NaiveDate) -> u32 {
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years.max(0) as u32
}

/// "Whichever is later": indefinite beats pending beats dates.
pub(crate) fn later(values: impl IntoIterator<Item = Value>) -> Value {
    let mut best: Option<NaiveDate> = None;
    let mut pending = 0u16;
    for v in values {
        match v {
            Value::Indefinite => return Value::Indefinite,
            Value::Pending(p) => pending |= p,
            Value::Date(d) => best = Some(best.map_or(d, |b| b.max(d))),
        }
    }
    if pending != 0 {
        Value::Pending(pending)
    } else {
        best.map_or(Value::Indefinite, Value::Date)
    }
}

/// "Whichever occurs first": the earliest known date; else pending; else indefinite.
pub(crate) fn first(values: impl IntoIterator<Item = Value>) -> Value {
    let mut best: Option<NaiveDate> = None;
    let mut pending = 0u16;
    for v in values {
        match v {
            Value::Indefinite => {}
            Value::Pending(p) => pending |= p,
            Value::Date(d) => best = Some(best.map_or(d, |b| b.min(d))),
        }
    }
    match (best, pending) {
        (Some(d), _) => Value::Date(d),
        (None, 0) => Value::Indefinite,
        (None, p) => Value::Pending(p),
    }
}

/// Parses `retain = ...`. Errors name the path within the expression, e.g. `later[1].from`.
pub(crate) fn parse(value: &toml::Value, path: &str) -> Result<Expr, (String, String)> {
    let table = match value {
        toml::Value::String(s) if s == "indefinite" => return Ok(Expr::Indefinite),
        toml::Value::String(s) => {
            return fail(
                path,
                format!("unknown expression \"{s}\"; the only word allowed is \"indefinite\""),
            );
        }
        toml::Value::Table(t) => t,
        other => {
            return fail(
                path,
                format!(
                    "expected \"indefinite\" or a table such as {{ years = 6, from = \"created\" }}, found a {}",
                    other.type_str()
                ),
            );
        }
    };
    let key_path = |k: &str| format!("{path}.{k}");
    let list = |k: &str| -> Result<Vec<Expr>, (String, String)> {
        let Some(toml::Value::Array(items)) = table.get(k) else {
            return fail(&key_path(k), "expected a list of expressions".to_owned());
        };
        if items.is_empty() {
            return fail(&key_path(k), "the list is empty".to_owned());
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| parse(v, &format!("{path}.{k}[{i}]")))
            .collect()
    };
    let only = |allowed: &[&str]| -> Result<(), (String, String)> {
        for k in table.keys() {
            if !allowed.contains(&k.as_str()) {
                return fail(
                    &key_path(k),
                    format!("unexpected key here; allowed: {}", allowed.join(", ")),
                );
            }
        }
        Ok(())
    };
    let uint = |k: &str| -> Result<Option<u32>, (String, String)> {
        match table.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if (0..=200).contains(n) => Ok(Some(*n as u32)),
            Some(v) => fail(
                &key_path(k),
                format!("expected a whole number from 0 to 200, found {v}"),
            ),
        }
    };

    if table.contains_key("later") {
        only(&["later"])?;
        return Ok(Expr::Later(list("later")?));
    }
    if table.contains_key("first") {
        only(&["first"])?;
        return Ok(Expr::First(list("first")?));
    }
    if table.contains_key("if-minor") {
        only(&["if-minor", "else", "at"])?;
        let minor = parse(&table["if-minor"], &key_path("if-minor"))?;
        let Some(adult) = table.get("else") else {
            return fail(
                &key_path("else"),
                "`if-minor` needs an `else` expression".to_owned(),
            );
        };
        let adult = parse(adult, &key_path("else"))?;
        let at = match table.get("at") {
            None => Anchor::Created,
            Some(v) => parse_anchor(v, &key_path("at"))?,
        };
        return Ok(Expr::IfMinor {
            at,
            minor: Box::new(minor),
            adult: Box::new(adult),
        });
    }
    if table.contains_key("age") {
        only(&["age"])?;
        return Ok(Expr::Age {
            years: uint("age")?.unwrap_or_default(),
        });
    }
    if table.contains_key("age-of-majority-plus") {
        only(&["age-of-majority-plus"])?;
        return Ok(Expr::MajorityPlus {
            years: uint("age-of-majority-plus")?.unwrap_or_default(),
        });
    }
    if table.contains_key("from") {
        only(&["years", "months", "days", "from"])?;
        let period = Period {
            years: uint("years")?.unwrap_or(0),
            months: uint("months")?.unwrap_or(0),
            days: uint("days")?.unwrap_or(0),
        };
        let from = match &table["from"] {
            toml::Value::Array(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_anchor(v, &format!("{path}.from[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => {
                return fail(&key_path("from"), "the list is empty".to_owned());
            }
            v => vec![parse_anchor(v, &key_path("from"))?],
        };
        if from.contains(&Anchor::Birth) {
            return fail(
                &key_path("from"),
                "use { age = N } for ages, not from = \"birth\"".to_owned(),
            );
        }
        return Ok(Expr::After { period, from });
    }
    fail(
        path,
        "expected one of: { years = N, from = ANCHOR }, { age = N }, { age-of-majority-plus = N }, { later = [...] }, { first = [...] }, { if-minor = ..., else = ... }".to_owned(),
    )
}

fn fail<T>(field: &str, msg: String) -> Result<T, (String, String)> {
    Err((field.to_owned(), msg))
}

fn parse_anchor(v: &toml::Value, path: &str) -> Result<Anchor, (String, String)> {
    let names = || {
        let usable: Vec<&str> = Anchor::ALL
            .iter()
            .filter(|a| **a != Anchor::Birth)
            .map(|a| a.as_str())
            .collect();
        usable.join(", ")
    };
    match v {
        toml::Value::String(s) => Anchor::parse(s).ok_or_else(|| {
            (
                path.to_owned(),
                format!("unknown anchor \"{s}\"; known: {}", names()),
            )
        }),
        other => Err((
            path.to_owned(),
            format!("expected an anchor name ({}), found {other}", names()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn expr(src: &str) -> Expr {
        let v: toml::Table = toml::from_str(&format!("retain = {src}")).unwrap();
        parse(&v["retain"], "retain").unwrap()
    }

    fn parse_err(src: &str) -> (String, String) {
        let v: toml::Table = toml::from_str(&format!("retain = {src}")).unwrap();
        parse(&v["retain"], "retain").unwrap_err()
    }

    fn ctx(pairs: &[(Anchor, &str)]) -> Anchors {
        let mut a = Anchors {
            majority: 18,
            ..Default::default()
        };
        for (k, v) in pairs {
            a.raise(*k, Some(d(v)));
        }
        a
    }

    #[test]
    fn after_uses_latest_known_anchor() {
        let e = expr(r#"{ years = 7, from = ["discharge", "last_encounter", "created"] }"#);
        let c = ctx(&[
            (Anchor::Created, "2020-01-01"),
            (Anchor::Discharge, "2021-06-30"),
        ]);
        assert_eq!(e.eval(&c), Value::Date(d("2028-06-30")));
        assert_eq!(
            e.eval(&ctx(&[])),
            Value::Pending(
                bit(Anchor::Discharge) | bit(Anchor::LastEncounter) | bit(Anchor::Created)
            )
        );
    }

    #[test]
    fn first_ignores_pending_when_a_date_is_known() {
        let e = expr(r#"{ first = [ { age = 21 }, { years = 7, from = "last_encounter" } ] }"#);
        let c = ctx(&[(Anchor::LastEncounter, "2020-01-01")]);
        assert_eq!(e.eval(&c), Value::Date(d("2027-01-01")));
    }

    #[test]
    fn later_is_pending_while_any_part_is() {
        let e = expr(r#"{ later = [ { age = 28 }, { years = 10, from = "last_encounter" } ] }"#);
        let c = ctx(&[(Anchor::LastEncounter, "2020-01-01")]);
        assert_eq!(e.eval(&c), Value::Pending(bit(Anchor::Birth)));
    }

    #[test]
    fn if_minor_falls_back_to_later_when_age_unknown() {
        let e = expr(
            r#"{ if-minor = { years = 1, from = "created" }, else = { years = 3, from = "created" }, at = "created" }"#,
        );
        let c = ctx(&[(Anchor::Created, "2020-01-01")]);
        assert_eq!(e.eval(&c), Value::Date(d("2023-01-01")));
        let minor = ctx(&[
            (Anchor::Created, "2020-01-01"),
            (Anchor::Birth, "2010-01-01"),
        ]);
        assert_eq!(e.eval(&minor), Value::Date(d("2021-01-01")));
        // 18th birthday on the anchor date: an adult that day.
        let adult = ctx(&[
            (Anchor::Created, "2020-01-01"),
            (Anchor::Birth, "2002-01-01"),
        ]);
        assert_eq!(e.eval(&adult), Value::Date(d("2023-01-01")));
    }

    #[test]
    fn age_on_birthdays() {
        assert_eq!(age_on(d("2002-01-01"), d("2019-12-31")), 17);
        assert_eq!(age_on(d("2002-01-01"), d("2020-01-01")), 18);
        assert_eq!(age_on(d("2004-02-29"), d("2022-02-28")), 17);
        assert_eq!(age_on(d("2004-02-29"), d("2022-03-01")), 18);
    }

    #[test]
    fn parse_errors_name_the_path() {
        assert_eq!(
            parse_err(r#"{ years = 6, from = "creation" }"#).0,
            "retain.from"
        );
        assert_eq!(
            parse_err(r#"{ later = [ { years = 6, from = "created" }, { yeras = 6 } ] }"#).0,
            "retain.later[1]"
        );
        assert_eq!(parse_err(r#"{ later = [] }"#).0, "retain.later");
        assert_eq!(
            parse_err(r#"{ years = -1, from = "created" }"#).0,
            "retain.years"
        );
        assert_eq!(parse_err(r#""forever""#).0, "retain");
        assert_eq!(
            parse_err(r#"{ later = [ "indefinite" ], extra = 1 }"#).0,
            "retain.extra"
        );
        assert_eq!(parse_err(r#"{ if-minor = "indefinite" }"#).0, "retain.else");
    }

    #[test]
    fn describe_reads_like_the_law() {
        let e = expr(
            r#"{ later = [ { years = 6, from = "created" }, { years = 6, from = "last_in_effect" } ] }"#,
        );
        assert_eq!(
            e.describe(),
            "later of: created + 6 years; last_in_effect + 6 years"
        );
    }
}
