//! The analyst's view of the lake: the same tables, views and functions under the same names,
//! with every PHI column reading as NULL (of its own type).
//!
//! [`mask_for_analyst`] rewrites an opened [`Catalog`]'s session in place:
//! - `records`, `holds` and `events` become views projecting their masked columns over the Delta
//!   tables, which are then no longer registered under any name;
//! - the views built on them (`records_on_hold`, `current_holds`, `active_holds`) keep their
//!   plans (hold coverage is still evaluated on the stored values) with the masking projection
//!   on top; every view is re-registered **without its SQL text**, which holds the holds'
//!   conditions (keywords, patient references) and would show in `information_schema.views`;
//! - `disposal_candidates(...)` returns its rows masked;
//! - `is_held()` is removed: it evaluates the holds' conditions on the columns in scope, which
//!   are masked here (use `records_on_hold` or `hold_coverage`).
//!
//! `EXPLAIN` is refused for analysts by the query handler (plans print the holds' conditions).

use std::sync::Arc;

use retain_query::datafusion::catalog::TableFunctionArgs;
use retain_query::datafusion::catalog::TableFunctionImpl;
use retain_query::datafusion::catalog::TableProvider;
use retain_query::datafusion::catalog::view::ViewTable;
use retain_query::datafusion::common::{Column, ScalarValue};
use retain_query::datafusion::datasource::provider_as_source;
use retain_query::datafusion::error::{DataFusionError, Result as DfResult};
use retain_query::datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit};
use retain_query::datafusion::prelude::SessionContext;
use retain_query::{Catalog, DISPOSAL_CANDIDATES, IS_HELD, VIEWS};

/// The `records` columns an analyst reads as NULL: addresses, subject, folder and labels
/// (free text a mailbox owner chose), attachments (file names), patient references, and the
/// obligations (their `fact` entries can hold a patient's birth date, docs/events.md).
pub const RECORDS_PHI: [&str; 10] = [
    "from_address",
    "to_addresses",
    "cc_addresses",
    "bcc_addresses",
    "subject",
    "folder",
    "labels",
    "attachments",
    "patient_refs",
    "obligations",
];

/// The `holds` columns an analyst reads as NULL: the matter, the reasons and the scope (a
/// scope can name a patient or a keyword from a subject; the condition is SQL over PHI).
pub const HOLDS_PHI: [&str; 5] = [
    "matter",
    "reason",
    "scope",
    "predicate",
    "release_justification",
];

/// The `events` columns an analyst reads as NULL: the patient an event names.
pub const EVENTS_PHI: [&str; 1] = ["patient_mrn"];

/// `input` with every column named in `phi` replaced by a NULL of its type, same names and order.
pub fn masked(input: LogicalPlan, phi: &[&str]) -> DfResult<LogicalPlan> {
    let exprs = input
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            if phi.contains(&field.name().as_str()) {
                Ok(lit(ScalarValue::try_from(field.data_type())?).alias(field.name()))
            } else {
                Ok(Expr::Column(Column::new(qualifier.cloned(), field.name())))
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    LogicalPlanBuilder::from(input).project(exprs)?.build()
}

/// Which PHI list applies to a relation with these columns (`records`-shaped or `holds`-shaped).
fn phi_of(plan: &LogicalPlan) -> &'static [&'static str] {
    let has = |c: &str| plan.schema().fields().iter().any(|f| f.name() == c);
    if has("subject") || has("from_address") {
        &RECORDS_PHI
    } else if has("predicate") || has("matter") {
        &HOLDS_PHI
    } else {
        &[]
    }
}

fn view(plan: LogicalPlan) -> Arc<dyn TableProvider> {
    Arc::new(ViewTable::new(plan, None))
}

async fn provider(ctx: &SessionContext, name: &str) -> DfResult<Arc<dyn TableProvider>> {
    ctx.table_provider(name).await
}

/// Rewrites `catalog`'s session so that no PHI column can be read (see the module docs).
pub async fn mask_for_analyst(catalog: &Catalog) -> DfResult<()> {
    let ctx = catalog.session();
    // Views first, while their plans still point at the stored tables: the masking goes on
    // top, the coverage underneath stays exact.
    for name in VIEWS {
        let p = provider(ctx, name).await?;
        let plan = p
            .get_logical_plan()
            .ok_or_else(|| DataFusionError::Internal(format!("{name} is not a view")))?
            .into_owned();
        let phi = phi_of(&plan);
        let plan = if phi.is_empty() {
            plan
        } else {
            masked(plan, phi)?
        };
        ctx.deregister_table(name)?;
        ctx.register_table(name, view(plan))?;
    }
    for (name, phi) in [
        ("records", &RECORDS_PHI[..]),
        ("holds", &HOLDS_PHI[..]),
        ("events", &EVENTS_PHI[..]),
    ] {
        let stored = provider(ctx, name).await?;
        let scan = LogicalPlanBuilder::scan(name, provider_as_source(stored), None)?.build()?;
        ctx.deregister_table(name)?;
        ctx.register_table(name, view(masked(scan, phi)?))?;
    }
    let candidates = ctx
        .state()
        .table_functions()
        .get(DISPOSAL_CANDIDATES)
        .map(|f| Arc::clone(f.function()))
        .ok_or_else(|| DataFusionError::Internal(format!("{DISPOSAL_CANDIDATES} is missing")))?;
    ctx.register_udtf(
        DISPOSAL_CANDIDATES,
        Arc::new(MaskedRows { inner: candidates }),
    );
    ctx.deregister_udf(IS_HELD);
    Ok(())
}

/// A table function whose rows come back with the `records` PHI columns masked.
#[derive(Debug)]
struct MaskedRows {
    inner: Arc<dyn TableFunctionImpl>,
}

impl TableFunctionImpl for MaskedRows {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let rows = self.inner.call_with_args(args)?;
        let scan = LogicalPlanBuilder::scan(DISPOSAL_CANDIDATES, provider_as_source(rows), None)?
            .build()?;
        Ok(view(masked(scan, &RECORDS_PHI)?))
    }
}
