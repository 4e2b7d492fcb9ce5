//! Which records the active holds cover, and which records are due for disposal: evaluated on
//! Arrow batches of the `records` table, the same code for a hold preview, a disposal plan and
//! the re-check at execution.
//!
//! A hold's predicate is parsed by DataFusion against the `records` schema once and evaluated
//! on each batch. NULL counts as covered: a record a hold might cover is kept.

use std::sync::{Arc, LazyLock};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Date32Type};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, ExprSchemable, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use retain_lake::deltalake::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};

/// A hold ready to be evaluated: its id and its predicate.
#[derive(Debug, Clone)]
pub struct CompiledHold {
    /// The hold's id.
    pub id: String,
    /// The SQL predicate it was compiled from.
    pub predicate: String,
    expr: Arc<dyn PhysicalExpr>,
}

/// The holds in force, compiled against one schema.
#[derive(Debug, Clone)]
pub struct HoldSet {
    holds: Vec<CompiledHold>,
}

impl HoldSet {
    /// No holds.
    pub fn empty() -> Self {
        HoldSet { holds: Vec::new() }
    }

    /// Compiles `(id, predicate)` pairs against `schema` (the `records` table's).
    pub fn compile<'a>(
        schema: &SchemaRef,
        holds: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        // One context for parsing and planning (building one registers every function).
        static CTX: LazyLock<SessionContext> = LazyLock::new(sql_session);
        let ctx = &*CTX;
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| Error::Query {
            doing: "reading the records schema".to_owned(),
            source: Box::new(e),
        })?;
        let holds = holds
            .into_iter()
            .map(|(id, predicate)| {
                let expr =
                    compile(ctx, &df_schema, predicate).map_err(|reason| Error::Predicate {
                        hold: id.to_owned(),
                        reason,
                    })?;
                Ok(CompiledHold {
                    id: id.to_owned(),
                    predicate: predicate.to_owned(),
                    expr,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HoldSet { holds })
    }

    /// The holds.
    pub fn holds(&self) -> &[CompiledHold] {
        &self.holds
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// For each row of `batch`, the indexes (into [`holds`](Self::holds)) of the holds that
    /// cover it (their predicate is true or NULL).
    pub fn covering(&self, batch: &RecordBatch) -> Result<Vec<Vec<usize>>> {
        let mut out = vec![Vec::new(); batch.num_rows()];
        for (i, hold) in self.holds.iter().enumerate() {
            let covered = evaluate(hold, batch)?;
            for (row, holds) in out.iter_mut().enumerate() {
                if covered.is_null(row) || covered.value(row) {
                    holds.push(i);
                }
            }
        }
        Ok(out)
    }

    /// Which rows of `batch` are due for disposal on `cutoff`: scheduled, with a
    /// `retain_until` on or before `cutoff`, and covered by no hold. Indefinite, pending and
    /// undated records are never due.
    pub fn due(&self, batch: &RecordBatch, cutoff: NaiveDate) -> Result<BooleanArray> {
        let dated = dated_by(batch, cutoff)?;
        let covering = if self.holds.is_empty() {
            vec![Vec::new(); batch.num_rows()]
        } else {
            self.covering(batch)?
        };
        Ok((0..batch.num_rows())
            .map(|row| Some(dated[row] && covering[row].is_empty()))
            .collect())
    }
}

/// The latest `retain_until` a disposal run may act on: its as-of date, but never after
/// `today`, whatever the caller asks (no record is disposed of before its date).
pub fn cutoff(as_of: NaiveDate, today: NaiveDate) -> NaiveDate {
    as_of.min(today)
}

/// Rows whose schedule has run out by `cutoff`: status `scheduled` and `retain_until` ≤ cutoff.
pub fn dated_by(batch: &RecordBatch, cutoff: NaiveDate) -> Result<Vec<bool>> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| Error::Query {
            doing: format!("reading column `{name}` of a records batch"),
            source: "the column is missing".into(),
        })
    };
    let until = column("retain_until")?;
    let until = until
        .as_primitive_opt::<Date32Type>()
        .ok_or_else(|| Error::Query {
            doing: "reading column `retain_until`".to_owned(),
            source: format!("expected a date, found {}", until.data_type()).into(),
        })?;
    let status = column("retention_status")?;
    let status = status.as_string_opt::<i32>().ok_or_else(|| Error::Query {
        doing: "reading column `retention_status`".to_owned(),
        source: format!("expected text, found {}", status.data_type()).into(),
    })?;
    let cutoff = Date32Type::from_naive_date(cutoff);
    Ok((0..batch.num_rows())
        .map(|i| {
            !until.is_null(i)
                && until.value(i) <= cutoff
                && !status.is_null(i)
                && status.value(i) == "scheduled"
        })
        .collect())
}

fn evaluate(hold: &CompiledHold, batch: &RecordBatch) -> Result<BooleanArray> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Query {
        doing: format!("evaluating hold {}", hold.id),
        source,
    };
    let value = hold.expr.evaluate(batch).map_err(|e| failed(Box::new(e)))?;
    let array = value
        .into_array(batch.num_rows())
        .map_err(|e| failed(Box::new(e)))?;
    array
        .as_boolean_opt()
        .cloned()
        .ok_or_else(|| failed(format!("the predicate gave {}", array.data_type()).into()))
}

/// Parses and plans one predicate; refuses what could make coverage change by itself or
/// depend on other tables (subqueries, aggregates, window and volatile functions) and anything
/// that is not a boolean.
fn compile(
    ctx: &SessionContext,
    schema: &DFSchema,
    predicate: &str,
) -> std::result::Result<Arc<dyn PhysicalExpr>, String> {
    // Before planning, which would only say the subquery's table is unknown.
    if mentions_select(predicate) {
        return Err("subqueries are not allowed: a hold is a condition on one record".to_owned());
    }
    let expr = ctx
        .parse_sql_expr(predicate, schema)
        .map_err(|e| first_line(&e.to_string()))?;
    let mut refused = None;
    expr.apply(|e| {
        let why = match e {
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                Some("subqueries are not allowed: a hold is a condition on one record".to_owned())
            }
            Expr::AggregateFunction(_) | Expr::WindowFunction(_) => Some(
                "aggregate and window functions are not allowed: a hold is a condition on one record"
                    .to_owned(),
            ),
            Expr::ScalarFunction(f) if f.func.signature().volatility == Volatility::Volatile => {
                Some(format!(
                    "`{}` is volatile: a hold must cover the same records every time it is evaluated",
                    f.name()
                ))
            }
            _ => None,
        };
        match why {
            Some(w) => {
                refused = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(why) = refused {
        return Err(why);
    }
    let physical = ctx
        .create_physical_expr(expr.clone(), schema)
        .map_err(|e| first_line(&e.to_string()))?;
    let ty = expr
        .get_type(schema)
        .map_err(|e| first_line(&e.to_string()))?;
    if !matches!(ty, DataType::Boolean | DataType::Null) {
        return Err(format!("the condition is a {ty}, not true or false"));
    }
    Ok(physical)
}

/// A DataFusion session that reads SQL as PostgreSQL writes it, as the SQL catalog
/// (`retain-query`) does: a hold's condition means the same here, where coverage decides
/// disposal, and in the catalog's views (operator precedence differs between dialects).
pub(crate) fn sql_session() -> SessionContext {
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    SessionContext::new_with_config(config)
}

/// Whether the SQL text has a SELECT keyword outside string literals and quoted names.
fn mentions_select(sql: &str) -> bool {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map(|tokens| {
            tokens.iter().any(
                |t| matches!(t, Token::Word(w) if w.keyword == Keyword::SELECT && w.quote_style.is_none()),
            )
        })
        .unwrap_or(false)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}
