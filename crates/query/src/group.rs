//! A physical rewrite the catalog's session adds to DataFusion's optimizer: the first
//! (partial) step of a `GROUP BY` whose keys are all text dictionaries (`records`' low-cardinality
//! columns, [`crate::DICTIONARY_COLUMNS`]) runs as [`DictionaryAggregateExec`] instead of
//! DataFusion's `AggregateExec`.
//!
//! DataFusion 55 groups dictionary keys on its row-format path: every row's keys are encoded
//! into a byte row, hashed and compared, about 20 ns a row for two keys. Here each batch's
//! dictionaries (a few dozen values, shared by every batch of a Parquet column chunk) are
//! mapped to group ids once, and a row's group is one table look-up by its dictionary keys. The
//! aggregates are DataFusion's own `GroupsAccumulator`s, fed exactly as `AggregateExec` feeds
//! them, and the output is the partial state `AggregateExec` would emit (same schema), so the
//! final step above is unchanged.
//!
//! Only plain partial aggregations qualify: one grouping set, every key a column of type
//! `Dictionary(Int32, Utf8)`, every aggregate with a groups accumulator and no `ORDER BY`, no
//! limit or dynamic filter. Anything else stays with DataFusion.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, internal_datafusion_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput as _,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::{StreamExt as _, stream};

/// The rule: replaces each qualifying partial `AggregateExec` ([`qualifies`]).
#[derive(Debug, Default)]
pub(crate) struct DictionaryAggregate;

impl PhysicalOptimizerRule for DictionaryAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let any: &dyn std::any::Any = node.as_ref();
            match any.downcast_ref::<AggregateExec>() {
                Some(agg) if qualifies(agg) => Ok(Transformed::yes(Arc::new(
                    DictionaryAggregateExec::new(Arc::new(agg.clone())),
                ) as _)),
                _ => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "retain_dictionary_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `a` and `b` are the same array: the same `Arc`, or the same buffers (the Parquet
/// reader wraps a column chunk's dictionary anew for every batch, over the same buffers). The
/// caller keeps `a` alive, so its buffers cannot be freed and their addresses reused.
pub(crate) fn same_array(a: &ArrayRef, b: &ArrayRef) -> bool {
    Arc::ptr_eq(a, b) || (a.data_type() == b.data_type() && a.to_data().ptr_eq(&b.to_data()))
}

/// The text dictionaries the catalog reads low-cardinality columns as.
fn is_text_dictionary(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8)
}

/// Whether `agg` is a partial aggregation [`DictionaryAggregateExec`] computes exactly.
fn qualifies(agg: &AggregateExec) -> bool {
    let input = agg.input().schema();
    let group_by = agg.group_expr();
    *agg.mode() == AggregateMode::Partial
        && group_by.is_single()
        && !group_by.expr().is_empty()
        && group_by.expr().iter().all(|(e, _)| {
            let any: &dyn std::any::Any = e.as_ref();
            any.downcast_ref::<Column>().is_some_and(|c| {
                input
                    .fields()
                    .get(c.index())
                    .is_some_and(|f| is_text_dictionary(f.data_type()))
            })
        })
        && agg.aggr_expr().iter().all(|a| {
            a.groups_accumulator_supported() && a.order_bys().is_empty() && !a.is_distinct()
        })
        && agg.limit_options().is_none()
        && agg.dynamic_expressions_produced().is_empty()
        && *agg.input_order_mode() == InputOrderMode::Linear
}

/// A partial `AggregateExec` over dictionary keys, computed by mapping dictionaries to group
/// ids (see the module documentation). It keeps the `AggregateExec` it replaces for its
/// expressions, schema and plan properties.
#[derive(Debug)]
pub(crate) struct DictionaryAggregateExec {
    agg: Arc<AggregateExec>,
    metrics: ExecutionPlanMetricsSet,
}

impl DictionaryAggregateExec {
    fn new(agg: Arc<AggregateExec>) -> Self {
        Self {
            agg,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for DictionaryAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DictionaryAggregateExec: ")?;
        self.agg.fmt_as(t, f)
    }
}

impl ExecutionPlan for DictionaryAggregateExec {
    fn name(&self) -> &str {
        "DictionaryAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.agg.maintains_input_order()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let agg = Arc::clone(&self.agg).replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        let any: &dyn std::any::Any = agg.as_ref();
        match any.downcast_ref::<AggregateExec>() {
            Some(a) if qualifies(a) => Ok(Arc::new(Self::new(Arc::new(a.clone())))),
            _ => Ok(agg),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let keys = self
            .agg
            .group_expr()
            .expr()
            .iter()
            .map(|(e, _)| {
                let any: &dyn std::any::Any = e.as_ref();
                any.downcast_ref::<Column>()
                    .map(Column::index)
                    .ok_or_else(|| internal_datafusion_err!("a group key is not a column"))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let accumulators = self
            .agg
            .aggr_expr()
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<DfResult<Vec<_>>>()?;
        let arguments = self
            .agg
            .aggr_expr()
            .iter()
            .map(|a| a.expressions())
            .collect();
        // It can give memory back (by handing on its groups early), so it takes a spilling
        // consumer's fair share of the pool, not all that is free.
        let reservation = MemoryConsumer::new(format!("DictionaryAggregateExec[{partition}]"))
            .with_can_spill(true)
            .register(context.memory_pool());
        let state = State {
            input,
            groups: Groups::new(keys),
            accumulators,
            arguments,
            filters: self.agg.filter_expr().to_vec(),
            schema: Arc::clone(&schema),
            batch_size: context.session_config().batch_size(),
            reservation,
            metrics: BaselineMetrics::new(&self.metrics, partition),
            pending: VecDeque::new(),
            done: false,
        };
        let output = stream::try_unfold(state, |mut state| async move {
            loop {
                if let Some(batch) = state.pending.pop_front() {
                    let batch = batch.record_output(&state.metrics);
                    return Ok(Some((batch, state)));
                }
                if state.done {
                    state.reservation.free();
                    state.metrics.done();
                    return Ok(None);
                }
                match state.input.next().await {
                    Some(batch) => {
                        let batch = batch?;
                        let elapsed = state.metrics.elapsed_compute().clone();
                        let timer = elapsed.timer();
                        state.update(&batch)?;
                        let size = state.size();
                        if state.reservation.try_resize(size).is_err() {
                            // A partial aggregation may hand on what it has at any time: the
                            // final step merges states of the same group.
                            state.emit()?;
                            state.reservation.try_resize(state.size())?;
                        }
                        timer.done();
                    }
                    None => {
                        let elapsed = state.metrics.elapsed_compute().clone();
                        let timer = elapsed.timer();
                        state.emit()?;
                        state.done = true;
                        timer.done();
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's aggregation in progress.
struct State {
    input: SendableRecordBatchStream,
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Each aggregate's argument expressions.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Each aggregate's `FILTER (WHERE ...)`.
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    batch_size: usize,
    reservation: MemoryReservation,
    metrics: BaselineMetrics,
    /// Output not yet handed on.
    pending: VecDeque<RecordBatch>,
    done: bool,
}

impl State {
    fn update(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        self.groups.intern(batch)?;
        let total = self.groups.len();
        let indices = &self.groups.row_groups;
        for ((acc, arguments), filter) in self
            .accumulators
            .iter_mut()
            .zip(&self.arguments)
            .zip(&self.filters)
        {
            let values = arguments
                .iter()
                .map(|e| e.evaluate(batch).and_then(|v| v.into_array(rows)))
                .collect::<DfResult<Vec<ArrayRef>>>()?;
            let filter = filter
                .as_ref()
                .map(|f| f.evaluate(batch).and_then(|v| v.into_array(rows)))
                .transpose()?;
            let filter: Option<&BooleanArray> = filter.as_ref().map(|f| f.as_boolean());
            acc.update_batch(&values, indices, filter, total)?;
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// Moves every group so far to `pending` as partial-state batches and starts afresh.
    fn emit(&mut self) -> DfResult<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let mut columns = self.groups.take();
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = self.batch_size.min(batch.num_rows() - offset);
            self.pending.push_back(batch.slice(offset, len));
            offset += len;
        }
        Ok(())
    }
}

/// A group key column's distinct values, each with an id; `NULL` is its own value.
#[derive(Default)]
struct Values {
    ids: foldhash::HashMap<Box<str>, u32>,
    /// By id; `None` for `NULL`.
    values: Vec<Option<Box<str>>>,
    null: Option<u32>,
    bytes: usize,
}

impl Values {
    fn id(&mut self, value: Option<&str>) -> u32 {
        match value {
            None => *self.null.get_or_insert_with(|| {
                self.values.push(None);
                (self.values.len() - 1) as u32
            }),
            Some(v) => {
                if let Some(id) = self.ids.get(v) {
                    return *id;
                }
                let id = self.values.len() as u32;
                self.values.push(Some(v.into()));
                self.ids.insert(v.into(), id);
                self.bytes += 2 * v.len() + 64;
                id
            }
        }
    }
}

/// Look-up tables up to this many cells (256 KiB); beyond, rows are looked up by hash.
const MAX_TABLE: usize = 1 << 16;

/// The groups seen so far: per key column its values, per group the value id of each key.
struct Groups {
    /// The key columns' indices in the input.
    keys: Vec<usize>,
    values: Vec<Values>,
    /// Group index by the key columns' value ids.
    index: foldhash::HashMap<Box<[u32]>, u32>,
    /// Per key column, each group's value id.
    group_ids: Vec<Vec<u32>>,
    /// Each row's group, for the accumulators.
    row_groups: Vec<usize>,
    /// How the last batch's keys were looked up, reused while the next batches share its
    /// dictionaries (the batches of one Parquet column chunk do).
    last: Option<Lookup>,
    scratch: Vec<u32>,
}

/// How keys under a set of dictionaries map to groups.
struct Lookup {
    /// The key columns' dictionary values (kept alive, so comparing their buffers' addresses
    /// is sound).
    dictionaries: Vec<ArrayRef>,
    /// Per key column, each dictionary entry's value id, then the NULL key's.
    locals: Vec<Vec<u32>>,
    /// Groups by local code (the keys combined), filled as codes appear; `None` when the
    /// combinations are too many for a table, and rows are looked up by hash.
    table: Option<Vec<u32>>,
}

impl Lookup {
    fn size(&self) -> usize {
        self.locals.iter().map(|l| l.capacity() * 4).sum::<usize>()
            + self.table.as_ref().map_or(0, |t| t.capacity() * 4)
    }
}

/// A table cell not yet resolved to a group.
const UNSET: u32 = u32::MAX;

impl Groups {
    fn new(keys: Vec<usize>) -> Self {
        Self {
            values: keys.iter().map(|_| Values::default()).collect(),
            group_ids: keys.iter().map(|_| Vec::new()).collect(),
            keys,
            index: foldhash::HashMap::default(),
            row_groups: Vec::new(),
            last: None,
            scratch: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.group_ids[0].len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn size(&self) -> usize {
        self.values.iter().map(|v| v.bytes).sum::<usize>()
            + self.index.capacity() * (16 + 4 * self.keys.len() + 8)
            + self
                .group_ids
                .iter()
                .map(|g| g.capacity() * 4)
                .sum::<usize>()
            + self.row_groups.capacity() * 8
            + self.last.as_ref().map_or(0, Lookup::size)
    }

    /// The group of the key value ids in `scratch`, added if new.
    fn group_of(&mut self, ids: &[u32]) -> u32 {
        if let Some(g) = self.index.get(ids) {
            return *g;
        }
        let g = self.len() as u32;
        for (column, id) in self.group_ids.iter_mut().zip(ids) {
            column.push(*id);
        }
        self.index.insert(ids.into(), g);
        g
    }

    /// Each row's group into `row_groups` (adding new groups).
    fn intern(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let mut dictionaries = Vec::with_capacity(self.keys.len());
        for &k in &self.keys {
            let column = batch.column(k);
            let d: &DictionaryArray<Int32Type> = column
                .as_dictionary_opt()
                .ok_or_else(|| internal_datafusion_err!("a group key is not a dictionary"))?;
            dictionaries.push(d);
        }
        let rows = batch.num_rows();
        let same = self.last.as_ref().is_some_and(|last| {
            last.dictionaries
                .iter()
                .zip(&dictionaries)
                .all(|(p, d)| same_array(p, d.values()))
        });
        let mut last = match self.last.take() {
            Some(last) if same => last,
            _ => self.lookup(&dictionaries),
        };
        self.row_groups.clear();
        self.row_groups.reserve(rows);
        let mut scratch = std::mem::take(&mut self.scratch);
        match &mut last.table {
            Some(table) => {
                // Each row's local code: its dictionary keys (the NULL slot for a NULL key)
                // combined, column by column, in mixed radix.
                let mut codes = vec![0u32; rows];
                let mut stride = 1u32;
                for (d, local) in dictionaries.iter().zip(&last.locals) {
                    let null = (local.len() - 1) as u32;
                    let keys = d.keys();
                    if keys.null_count() == 0 {
                        for (code, key) in codes.iter_mut().zip(keys.values()) {
                            *code += *key as u32 * stride;
                        }
                    } else {
                        for (i, code) in codes.iter_mut().enumerate() {
                            let key = if keys.is_valid(i) {
                                keys.value(i) as u32
                            } else {
                                null
                            };
                            *code += key * stride;
                        }
                    }
                    stride *= local.len() as u32;
                }
                for code in codes {
                    let mut g = table[code as usize];
                    if g == UNSET {
                        scratch.clear();
                        let mut rest = code as usize;
                        for local in &last.locals {
                            scratch.push(local[rest % local.len()]);
                            rest /= local.len();
                        }
                        g = self.group_of(&scratch);
                        table[code as usize] = g;
                    }
                    self.row_groups.push(g as usize);
                }
            }
            None => {
                for row in 0..rows {
                    scratch.clear();
                    for (d, local) in dictionaries.iter().zip(&last.locals) {
                        let keys = d.keys();
                        let key = if keys.is_valid(row) {
                            keys.value(row) as usize
                        } else {
                            local.len() - 1
                        };
                        scratch.push(local[key]);
                    }
                    let g = self.group_of(&scratch);
                    self.row_groups.push(g as usize);
                }
            }
        }
        self.scratch = scratch;
        self.last = Some(last);
        Ok(())
    }

    /// The value ids of `dictionaries`' entries, and an empty table when their combinations
    /// are few enough.
    fn lookup(&mut self, dictionaries: &[&DictionaryArray<Int32Type>]) -> Lookup {
        // Per key column: each dictionary entry's value id, then the NULL key's.
        let locals: Vec<Vec<u32>> = dictionaries
            .iter()
            .zip(&mut self.values)
            .map(|(d, values)| {
                let strings: &StringArray = d.values().as_string();
                let mut ids: Vec<u32> = (0..strings.len())
                    .map(|i| values.id(strings.is_valid(i).then(|| strings.value(i))))
                    .collect();
                ids.push(values.id(None));
                ids
            })
            .collect();
        let table = locals
            .iter()
            .try_fold(1usize, |n, local| n.checked_mul(local.len()))
            .filter(|cells| *cells <= MAX_TABLE)
            .map(|cells| vec![UNSET; cells]);
        Lookup {
            dictionaries: dictionaries
                .iter()
                .map(|d| Arc::clone(d.values()))
                .collect(),
            locals,
            table,
        }
    }

    /// The key columns of every group so far, as dictionaries; forgets the groups.
    fn take(&mut self) -> Vec<ArrayRef> {
        self.index.clear();
        self.last = None;
        let values = std::mem::take(&mut self.values);
        self.values = values.iter().map(|_| Values::default()).collect();
        values
            .into_iter()
            .zip(&mut self.group_ids)
            .map(|(values, ids)| {
                let strings: StringArray = values.values.iter().map(|v| v.as_deref()).collect();
                // A NULL key value is a NULL key (its dictionary entry stays unused).
                let keys: Int32Array = ids
                    .drain(..)
                    .map(|id| values.values[id as usize].as_ref().map(|_| id as i32))
                    .collect();
                Arc::new(DictionaryArray::<Int32Type>::new(keys, Arc::new(strings))) as ArrayRef
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;

    use super::*;

    /// Queries whose partial aggregation qualifies (every group key a dictionary column).
    const QUERIES: [&str; 4] = [
        "SELECT a, b, count(*) AS n, count(v) AS nv, sum(v) AS s, min(v) AS lo, max(v) AS hi, \
         avg(v) AS mean, count(*) FILTER (WHERE v > 0) AS positive \
         FROM t GROUP BY a, b ORDER BY a, b",
        "SELECT a, count(*) AS n FROM t GROUP BY a ORDER BY a",
        "SELECT c, a, b, sum(v) AS s, min(a) AS first_a FROM t GROUP BY c, a, b ORDER BY c, a, b",
        "SELECT b, count(*) AS n FROM t WHERE v IS NOT NULL GROUP BY b HAVING count(*) > 1 \
         ORDER BY b",
    ];

    fn dictionary_type() -> DataType {
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", dictionary_type(), true),
            Field::new("b", dictionary_type(), true),
            Field::new("c", dictionary_type(), true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn session(rule: bool, pool: Option<usize>) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(64);
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(bytes) = pool {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
        }
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc().unwrap())
            .with_default_features();
        if rule {
            state = state.with_physical_optimizer_rule(Arc::new(DictionaryAggregate));
        }
        SessionContext::new_with_state(state.build())
    }

    /// One key column of a batch: one of the column's dictionaries (shared, as a Parquet column
    /// chunk's batches share theirs) and keys into it, `None` for a NULL key.
    fn column(dictionaries: &[ArrayRef], pick: usize, keys: &[Option<u8>]) -> ArrayRef {
        let values = Arc::clone(&dictionaries[pick % dictionaries.len()]);
        let n = values.len() as i32;
        let keys: Int32Array = keys
            .iter()
            .map(|k| k.map(|k| (k as i32) % n.max(1)).filter(|_| n > 0))
            .collect();
        Arc::new(DictionaryArray::<Int32Type>::new(keys, values))
    }

    /// Dictionaries of up to `size` values drawn from a few names, NULL and repeats included.
    fn dictionaries(size: usize) -> impl Strategy<Value = Vec<ArrayRef>> {
        prop::collection::vec(
            prop::collection::vec(prop::option::weighted(0.9, 0u8..8), 1..=size),
            1..4,
        )
        .prop_map(|ds| {
            ds.into_iter()
                .map(|d| {
                    let values: StringArray =
                        d.iter().map(|v| v.map(|v| format!("v{v}"))).collect();
                    Arc::new(values) as ArrayRef
                })
                .collect()
        })
    }

    type Row = (Option<u8>, Option<u8>, Option<u8>, Option<i8>);

    fn batches(
        d: &[Vec<ArrayRef>; 3],
        partitions: Vec<Vec<(usize, Vec<Row>)>>,
    ) -> Vec<Vec<RecordBatch>> {
        partitions
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|(pick, rows)| {
                        let key =
                            |f: fn(&Row) -> Option<u8>| rows.iter().map(f).collect::<Vec<_>>();
                        let v: Int64Array = rows.iter().map(|r| r.3.map(i64::from)).collect();
                        RecordBatch::try_new(
                            schema(),
                            vec![
                                column(&d[0], pick, &key(|r| r.0)),
                                column(&d[1], pick / 2, &key(|r| r.1)),
                                column(&d[2], pick / 3, &key(|r| r.2)),
                                Arc::new(v),
                            ],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// Each query's result, as text, and whether a plan used the rewrite.
    async fn results(ctx: &SessionContext, data: &[Vec<RecordBatch>]) -> (Vec<String>, bool) {
        let table = MemTable::try_new(schema(), data.to_vec()).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let mut out = Vec::new();
        let mut rewritten = false;
        for sql in QUERIES {
            let df = ctx.sql(sql).await.unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            rewritten |= displayable(plan.as_ref())
                .indent(true)
                .to_string()
                .contains("DictionaryAggregateExec");
            let batches = df.collect().await.unwrap();
            out.push(pretty_format_batches(&batches).unwrap().to_string());
        }
        (out, rewritten)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            prop::option::weighted(0.9, any::<u8>()),
            prop::option::weighted(0.9, any::<u8>()),
            prop::option::weighted(0.9, any::<u8>()),
            prop::option::weighted(0.8, -3i8..4),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every query answers the same with the rewrite as without it: dictionaries shared by
        /// batches or not, NULL keys, NULL and repeated dictionary values, several partitions.
        #[test]
        fn same_results_as_datafusion(
            d0 in dictionaries(6),
            d1 in dictionaries(6),
            d2 in dictionaries(3),
            partitions in prop::collection::vec(
                prop::collection::vec((0usize..6, prop::collection::vec(row(), 0..40)), 0..5),
                // Two partitions at least: with one, DataFusion aggregates in a single step.
                2..4,
            ),
        ) {
            let data = batches(&[d0, d1, d2], partitions);
            let (expected, plain_rewritten) = run(results(&session(false, None), &data));
            let (got, rewritten) = run(results(&session(true, None), &data));
            prop_assert!(!plain_rewritten);
            prop_assert!(rewritten);
            prop_assert_eq!(got, expected);
        }
    }

    /// The memory pool of the early-emission test.
    const POOL: usize = 1 << 20;

    /// Many values per key column: too many combinations for a look-up table, so rows are
    /// looked up by hash; and under a small memory pool the partial step hands on its groups
    /// early, more than once per partition.
    #[test]
    fn hashed_look_up_and_early_emission_agree_with_datafusion() {
        let values = |prefix: &str| -> ArrayRef {
            Arc::new(
                (0..60)
                    .map(|i| Some(format!("{prefix}{i}")))
                    .collect::<StringArray>(),
            )
        };
        let d = [vec![values("a")], vec![values("b")], vec![values("c")]];
        // 6,000 combinations of the keys, each met twice in each partition.
        let partitions = (0..2)
            .map(|p| {
                (0..40)
                    .map(|b| {
                        let rows = (0..300)
                            .map(|r| {
                                let combo = ((p * 12_000 + b * 300 + r) * 7919) % 6000;
                                let key = |x: usize| Some((x % 60) as u8);
                                (
                                    key(combo),
                                    key(combo / 60),
                                    key(combo * 7),
                                    Some((r % 7) as i8),
                                )
                            })
                            .collect();
                        (0, rows)
                    })
                    .collect()
            })
            .collect();
        let data = batches(&d, partitions);
        let (expected, _) = run(results(&session(false, None), &data));
        let (got, rewritten) = run(results(&session(true, None), &data));
        assert!(rewritten);
        assert_eq!(got, expected);

        // With its plan's metrics, unsorted (a sort needs more memory than the pool has).
        // Without early emission each partition would hand on each group once.
        let sql = "SELECT a, b, c, count(*) AS n, sum(v) AS s FROM t GROUP BY a, b, c";
        let lines = |batches: &[RecordBatch]| {
            let text = pretty_format_batches(batches).unwrap().to_string();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        let plain = session(false, None);
        plain
            .register_table(
                "t",
                Arc::new(MemTable::try_new(schema(), data.clone()).unwrap()),
            )
            .unwrap();
        let expected = lines(&run(async {
            plain.sql(sql).await.unwrap().collect().await.unwrap()
        }));
        let ctx = session(true, Some(POOL));
        let table = MemTable::try_new(schema(), data).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let (plan, batches) = run(async {
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let batches =
                datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await;
            (plan, batches)
        });
        let batches = batches.expect("the query runs under the small pool");
        assert_eq!(lines(&batches), expected);
        let mut emitted = None;
        plan.apply(|node| {
            if node.name() == "DictionaryAggregateExec" {
                emitted = node.metrics().and_then(|m| m.output_rows());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        let groups: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let emitted = emitted.expect("the rewrite ran");
        assert!(
            emitted > 2 * groups,
            "{emitted} partial rows for {groups} groups in 2 partitions: no early emission"
        );
    }
}
