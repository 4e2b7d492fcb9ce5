//! A logical rewrite the catalog's session adds to DataFusion's optimizer: a filter's
//! `(a AND b) IS NOT FALSE` (how hold coverage is written: true or unknown) becomes
//! `a IS NOT FALSE AND b IS NOT FALSE`. The two are equal in SQL's three-valued logic (an `AND` is
//! false exactly when one side is), but only the second is a conjunction, so each part is its
//! own filter: the scan can test the cheap, selective part (custodian, mailbox) while decoding
//! and decode the rest (subject) only for the rows it keeps.

use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::logical_expr::{BinaryExpr, Expr, Filter, LogicalPlan, Operator};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Splits `(a AND b) IS NOT FALSE` in filters into `a IS NOT FALSE AND b IS NOT FALSE`.
#[derive(Debug, Default)]
pub(crate) struct SplitIsNotFalse;

impl OptimizerRule for SplitIsNotFalse {
    fn name(&self) -> &str {
        "retain_split_is_not_false"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = plan else {
            return Ok(Transformed::no(plan));
        };
        let predicate = split(filter.predicate.clone())?;
        if !predicate.transformed {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        }
        Filter::try_new(predicate.data, filter.input)
            .map(|f| Transformed::yes(LogicalPlan::Filter(f)))
    }
}

/// `expr` with every `(a AND b) IS NOT FALSE` in it split (nested ones too).
fn split(expr: Expr) -> DfResult<Transformed<Expr>> {
    // Top-down, so the halves a split makes are visited (and split) in turn.
    expr.transform_down(|e| match e {
        Expr::IsNotFalse(inner) => match *inner {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => Ok(Transformed::yes(
                Expr::IsNotFalse(left).and(Expr::IsNotFalse(right)),
            )),
            other => Ok(Transformed::no(Expr::IsNotFalse(Box::new(other)))),
        },
        other => Ok(Transformed::no(other)),
    })
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    #[test]
    fn nested_conjunctions_under_is_not_false_become_conjuncts() {
        let (a, b, c) = (
            col("a").eq(lit(1)),
            col("b").eq(lit(2)),
            col("c").eq(lit(3)),
        );
        let e = Expr::IsNotFalse(Box::new(a.clone().and(b.clone().and(c.clone()))));
        let out = split(e).unwrap();
        assert!(out.transformed);
        let not_false = |e: Expr| Expr::IsNotFalse(Box::new(e));
        assert_eq!(out.data, not_false(a).and(not_false(b).and(not_false(c))));
    }

    #[test]
    fn a_disjunction_under_is_not_false_is_left_alone() {
        let e = Expr::IsNotFalse(Box::new(col("a").eq(lit(1)).or(col("b").eq(lit(2)))));
        let out = split(e.clone()).unwrap();
        assert!(!out.transformed);
        assert_eq!(out.data, e);
    }
}
