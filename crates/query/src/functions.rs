//! Retain's SQL functions: `is_held()` (rewritten into the active holds' conditions),
//! `years_until_disposal(retain_until[, as_of])`, and the `disposal_candidates(as_of)` table
//! function (what a disposal plan as of that date would select).

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Date32Type};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference, exec_err, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility, col, lit,
};

/// The name of the held-or-not function.
pub const IS_HELD: &str = "is_held";
/// The name of the years-left function.
pub const YEARS_UNTIL_DISPOSAL: &str = "years_until_disposal";
/// The name of the disposal-candidates table function.
pub const DISPOSAL_CANDIDATES: &str = "disposal_candidates";

/// Average days in a Gregorian year: `years_until_disposal` divides by it.
pub const DAYS_PER_YEAR: f64 = 365.2425;

/// `is_held()`: true when an active hold covers the row (its condition is true or NULL). It
/// has no body of its own: [`IsHeldRewrite`] replaces every call by the active holds'
/// conditions over the `records` columns in scope before the query runs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct IsHeld {
    signature: Signature,
}

impl IsHeld {
    pub(crate) fn new() -> Self {
        IsHeld {
            signature: Signature::nullary(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for IsHeld {
    fn name(&self) -> &str {
        IS_HELD
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        exec_err!("is_held() needs the columns of `records` in the query's FROM clause")
    }
}

/// Replaces `is_held()` by `held`, the OR of the active holds' `(condition) IS NOT FALSE`,
/// with its columns bound to the `records` columns of the plan node it appears in.
#[derive(Debug)]
pub(crate) struct IsHeldRewrite {
    /// Over unqualified `records` columns; `FALSE` when no hold is active.
    pub(crate) held: Expr,
}

impl FunctionRewrite for IsHeldRewrite {
    fn name(&self) -> &str {
        "retain_is_held"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> DfResult<Transformed<Expr>> {
        match &expr {
            Expr::ScalarFunction(f) if f.name() == IS_HELD => {}
            _ => return Ok(Transformed::no(expr)),
        }
        let needed = self.held.column_refs();
        // The relation that has every column the holds read: `records`, its alias, or a view
        // or subquery carrying them. Two such relations (a self-join) are ambiguous.
        let mut relations: Vec<Option<&TableReference>> = Vec::new();
        for (q, _) in schema.iter() {
            if !relations.contains(&q) {
                relations.push(q);
            }
        }
        let complete: Vec<Option<&TableReference>> = relations
            .into_iter()
            .filter(|q| {
                needed
                    .iter()
                    .all(|c| schema.iter().any(|(fq, f)| fq == *q && f.name() == &c.name))
            })
            .collect();
        let qualifier = match complete.as_slice() {
            [one] => one.cloned(),
            [] => {
                let missing: Vec<&str> = needed
                    .iter()
                    .filter(|c| {
                        schema
                            .qualified_field_with_unqualified_name(&c.name)
                            .is_err()
                    })
                    .map(|c| c.name.as_str())
                    .collect();
                return plan_err!(
                    "is_held() reads the records columns {}, which are not all in this query's FROM clause (missing or ambiguous: {}); select from records or records_on_hold",
                    needed
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    missing.join(", ")
                );
            }
            _ => {
                return plan_err!(
                    "is_held() is ambiguous here: more than one relation in the FROM clause has the records columns"
                );
            }
        };
        let bound = self
            .held
            .clone()
            .transform(|e| match e {
                Expr::Column(c) if c.relation.is_none() => Ok(Transformed::yes(Expr::Column(
                    Column::new(qualifier.clone(), c.name),
                ))),
                other => Ok(Transformed::no(other)),
            })?
            .data;
        Ok(Transformed::yes(bound))
    }
}

/// `years_until_disposal(retain_until[, as_of])`: years (of 365.2425 days) from `as_of`
/// (default: the catalog's today) to `retain_until`; negative once the date has passed, NULL
/// when either date is NULL (indefinite and pending records have none).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct YearsUntilDisposal {
    signature: Signature,
    today: NaiveDate,
}

impl YearsUntilDisposal {
    pub(crate) fn new(today: NaiveDate) -> Self {
        YearsUntilDisposal {
            signature: Signature::user_defined(Volatility::Immutable),
            today,
        }
    }
}

impl ScalarUDFImpl for YearsUntilDisposal {
    fn name(&self) -> &str {
        YEARS_UNTIL_DISPOSAL
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.is_empty() || arg_types.len() > 2 {
            return plan_err!(
                "years_until_disposal(retain_until[, as_of]) takes one or two dates, not {}",
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .map(|t| match t {
                DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Utf8
                | DataType::Utf8View
                | DataType::LargeUtf8
                | DataType::Null => Ok(DataType::Date32),
                other => plan_err!("years_until_disposal takes dates, not {other}"),
            })
            .collect()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let date = |a: &ArrayRef| -> DfResult<_> {
            let a = datafusion::arrow::compute::cast(a, &DataType::Date32)?;
            Ok(a.as_primitive::<Date32Type>().clone())
        };
        let until = date(&arrays[0])?;
        let as_of = arrays.get(1).map(date).transpose()?;
        let today = Date32Type::from_naive_date(self.today);
        let out: Float64Array = (0..until.len())
            .map(|i| {
                let from = match &as_of {
                    Some(a) if a.is_null(i) => return None,
                    Some(a) => a.value(i),
                    None => today,
                };
                (!until.is_null(i)).then(|| f64::from(until.value(i) - from) / DAYS_PER_YEAR)
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `disposal_candidates([as_of])`: the `records` a disposal plan as of `as_of` (default today)
/// would select: status `scheduled`, `retain_until` on or before the cut-off — `as_of`, but
/// never after the catalog's today — and covered by no active hold. Same columns as `records`.
#[derive(Debug)]
pub(crate) struct DisposalCandidates {
    pub(crate) records: Arc<dyn TableProvider>,
    /// Over unqualified `records` columns; `FALSE` when no hold is active.
    pub(crate) held: Expr,
    pub(crate) today: NaiveDate,
}

impl DisposalCandidates {
    /// The cut-off for `as_of` (see [`retain_govern::cutoff`]).
    pub(crate) fn cutoff(&self, as_of: NaiveDate) -> NaiveDate {
        retain_govern::cutoff(as_of, self.today)
    }
}

/// A date argument given as `'2030-01-01'` or `DATE '2030-01-01'`.
pub(crate) fn date_argument(function: &str, e: &Expr) -> DfResult<NaiveDate> {
    let bad = || {
        plan_err!("{function}: the argument must be a date literal such as '2030-01-01', not {e}")
    };
    let value = match e {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(v, _) => v.clone(),
            _ => return bad(),
        },
        _ => return bad(),
    };
    match value {
        ScalarValue::Date32(Some(d)) => Date32Type::to_naive_date_opt(d).map_or_else(bad, Ok),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => {
            match NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
                Ok(d) => Ok(d),
                Err(_) => plan_err!("{function}: `{s}` is not a date (YYYY-MM-DD)"),
            }
        }
        _ => bad(),
    }
}

impl TableFunctionImpl for DisposalCandidates {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let as_of = match args.exprs() {
            [] => self.today,
            [e] => date_argument(DISPOSAL_CANDIDATES, e)?,
            more => {
                return plan_err!(
                    "{DISPOSAL_CANDIDATES}([as_of]) takes at most one date, not {}",
                    more.len()
                );
            }
        };
        let cut = self.cutoff(as_of);
        let due = col("retention_status")
            .eq(lit("scheduled"))
            .and(col("retain_until").lt_eq(lit(ScalarValue::Date32(Some(
                Date32Type::from_naive_date(cut),
            )))))
            .and(Expr::Not(Box::new(self.held.clone())));
        let plan = LogicalPlanBuilder::scan(
            retain_lake::RECORDS_TABLE,
            provider_as_source(Arc::clone(&self.records)),
            None,
        )?
        .filter(due)?
        .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}
