//! Calendar arithmetic for retention periods.
//!
//! Retention must never end early, so a period that lands on a day the target month does not
//! have rolls *forward* to the first day of the next month: 2020-02-29 + 1 year = 2021-03-01,
//! 2021-01-31 + 1 month = 2021-03-01. (Plain "clamp to the month's end" would give 2021-02-28,
//! one day early.) A patient born on 29 February turns 21 on 1 March in common years.

use chrono::{Datelike, Days, NaiveDate};
use serde::{Deserialize, Serialize};

/// A calendar period: years, months and days, applied in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Period {
    /// Whole years.
    #[serde(default)]
    pub years: u32,
    /// Whole months.
    #[serde(default)]
    pub months: u32,
    /// Whole days.
    #[serde(default)]
    pub days: u32,
}

impl Period {
    /// A period of whole years.
    pub const fn years(years: u32) -> Self {
        Period {
            years,
            months: 0,
            days: 0,
        }
    }

    /// Whether the period is zero.
    pub fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (n, unit) in [
            (self.years, "year"),
            (self.months, "month"),
            (self.days, "day"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
            }
        }
        if parts.is_empty() {
            f.write_str("0 days")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Adds a period to a date, rolling a day the target month lacks forward to the 1st of the
/// next month (never earlier than the true anniversary). `None` past year 262143.
pub fn add_period(date: NaiveDate, period: Period) -> Option<NaiveDate> {
    let total_months =
        i64::from(date.month0()) + i64::from(period.months) + 12 * i64::from(period.years);
    let year = i64::from(date.year()) + total_months.div_euclid(12);
    let month0 = total_months.rem_euclid(12) as u32;
    let year = i32::try_from(year).ok()?;
    let shifted = match NaiveDate::from_ymd_opt(year, month0 + 1, date.day()) {
        Some(d) => d,
        None => {
            // The day does not exist in that month (29-31): first day of the next month.
            let (y, m) = if month0 == 11 {
                (year.checked_add(1)?, 1)
            } else {
                (year, month0 + 2)
            };
            NaiveDate::from_ymd_opt(y, m, 1)?
        }
    };
    shifted.checked_add_days(Days::new(u64::from(period.days)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn leap_day_plus_years_rolls_forward_in_common_years() {
        assert_eq!(
            add_period(d("2020-02-29"), Period::years(1)),
            Some(d("2021-03-01"))
        );
        assert_eq!(
            add_period(d("2020-02-29"), Period::years(4)),
            Some(d("2024-02-29"))
        );
        assert_eq!(
            add_period(d("2004-02-29"), Period::years(21)),
            Some(d("2025-03-01"))
        );
    }

    #[test]
    fn month_end_rolls_forward() {
        let p = Period {
            years: 0,
            months: 1,
            days: 0,
        };
        assert_eq!(add_period(d("2021-01-31"), p), Some(d("2021-03-01")));
        assert_eq!(add_period(d("2021-12-31"), p), Some(d("2022-01-31")));
        let p = Period {
            years: 0,
            months: 2,
            days: 0,
        };
        assert_eq!(add_period(d("2021-12-31"), p), Some(d("2022-03-01")));
    }

    #[test]
    fn days_after_months() {
        let p = Period {
            years: 1,
            months: 1,
            days: 10,
        };
        assert_eq!(add_period(d("2020-01-25"), p), Some(d("2021-03-07")));
    }

    #[test]
    fn overflow_is_none() {
        assert_eq!(add_period(NaiveDate::MAX, Period::years(1)), None);
    }

    #[test]
    fn display() {
        assert_eq!(Period::years(6).to_string(), "6 years");
        assert_eq!(
            Period {
                years: 1,
                months: 0,
                days: 1
            }
            .to_string(),
            "1 year 1 day"
        );
        assert_eq!(Period::default().to_string(), "0 days");
    }
}
