//! The catalog: one read-only, memory-limited DataFusion session over the lake's Delta tables,
//! with Retain's views and functions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{Days, NaiveDate, Utc};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry as _;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast, lit};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::DFParserBuilder;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use retain_events::{EVENTS_TABLE, events_schema};
use retain_govern::{
    DISPOSALS_TABLE, HOLDS_TABLE, MANIFESTS_TABLE, covered_clause, disposals_schema, holds_schema,
    manifests_schema,
};
use retain_lake::deltalake::{DeltaTableBuilder, ensure_table_uri};
use retain_lake::schema::columns;
use retain_lake::{
    AUDIT_TABLE, AuditAction, AuditEntry, DEAD_LETTERS_TABLE, RECORDS_TABLE, audit_schema,
    dead_letters_schema, records_schema,
};
use sha2::{Digest as _, Sha256};
use tracing::{debug, instrument};

use crate::error::{Error, Result};
use crate::functions::{
    DISPOSAL_CANDIDATES, DisposalCandidates, IsHeld, IsHeldRewrite, YearsUntilDisposal,
};
use crate::group::DictionaryAggregate;
use crate::scan::{DeltaFallback, ReadAs, SnapshotTable, with_read_types};
use crate::simplify::SplitIsNotFalse;
use crate::text::RewriteTextPredicates;

/// The memory the catalog's queries may use together unless told otherwise: 1 GiB. Sorts,
/// joins and aggregations spill to disk beyond their share; the rest fail with "resources
/// exhausted".
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;

/// How far ahead `upcoming_disposals` looks unless told otherwise: 365 days.
pub const DEFAULT_UPCOMING_DAYS: u32 = 365;

/// The lake's tables, as registered (a table the lake does not have yet is registered empty
/// with its known columns).
pub const TABLES: [&str; 7] = [
    RECORDS_TABLE,
    HOLDS_TABLE,
    MANIFESTS_TABLE,
    DISPOSALS_TABLE,
    AUDIT_TABLE,
    EVENTS_TABLE,
    DEAD_LETTERS_TABLE,
];

/// The views, as registered.
pub const VIEWS: [&str; 6] = [
    "current_holds",
    "active_holds",
    "hold_coverage",
    "records_on_hold",
    "upcoming_disposals",
    "ba_manifests",
];

/// The `records` columns the Parquet scan reads as Arrow dictionaries (`Dictionary(Int32,
/// Utf8)`): short codes, statuses, versions and mailbox names, a few distinct values among many
/// rows. Parquet stores them dictionary-encoded; reading them as dictionaries lets a filter,
/// `lower()` or a grouping on them work once per distinct value of a batch instead of once per
/// row. Results leave the catalog with these columns as plain text (see [`Catalog::plan`]).
pub const DICTIONARY_COLUMNS: [&str; 14] = [
    columns::TENANT,
    columns::MAILBOX,
    columns::CUSTODIAN,
    columns::DIRECTION,
    columns::CATEGORY,
    columns::RULE,
    columns::RETENTION_STATUS,
    columns::GOVERNING,
    columns::JURISDICTION,
    columns::RECORD_HOLDER,
    columns::POLICY_VERSION,
    columns::CLASSIFIER_POLICY_VERSION,
    columns::CLASSIFIER_VERSION,
    columns::SOURCE_TOPIC,
];

/// The `records` columns the Parquet scan reads as `Utf8View`: long, mostly distinct text that
/// queries search (a hold's keywords) more than they transform. The reader then points into
/// the pages it decoded instead of copying each string; measured on the 10M-record benchmark
/// (docs/PERFORMANCE.md), this took 14-16 % off the disposal query, which reads `subject` for
/// every candidate row. Results leave the catalog with it as plain text.
pub const VIEW_COLUMNS: [&str; 1] = [columns::SUBJECT];

/// How to open a [`Catalog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogOptions {
    /// Bytes of memory all queries of the session may hold at once (a fair-spill pool).
    pub memory_limit: usize,
    /// The day the catalog takes as today (the disposal cut-off never goes past it); `None`:
    /// the UTC date when the catalog opens.
    pub today: Option<NaiveDate>,
    /// How many days ahead `upcoming_disposals` looks.
    pub upcoming_days: u32,
    /// How the lake's Delta tables are read.
    pub scan: TableScan,
}

/// How the catalog reads a Delta table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableScan {
    /// DataFusion's Parquet scan over the active files of the snapshot the catalog loaded,
    /// skipping files by the statistics in the Delta log; a table that needs more than that
    /// (partition columns, column mapping, deletion vectors, a reader feature not in
    /// [`READER_FEATURES`](crate::READER_FEATURES)) is read through deltalake instead.
    #[default]
    Parquet,
    /// deltalake's own table provider, for every table.
    Delta,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            today: None,
            upcoming_days: DEFAULT_UPCOMING_DAYS,
            scan: TableScan::default(),
        }
    }
}

/// One lake table as the catalog registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeTable {
    /// The SQL name (`records`).
    pub name: String,
    /// Where it is (credentials removed).
    pub url: String,
    /// The Delta version read; `None` when the lake has no such table yet (registered empty).
    pub version: Option<u64>,
    /// How it is read ([`TableScan::Delta`] for a table the Parquet scan cannot read exactly;
    /// [`TableScan::Parquet`] for a missing table).
    pub scan: TableScan,
}

/// An active hold as the catalog evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHold {
    /// The hold's id.
    pub id: String,
    /// Its condition over `records` (covered when true or NULL).
    pub predicate: String,
}

/// One parsed and planned statement, ready to run.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Its position in the text given to [`Catalog::plan`], from 1.
    pub index: usize,
    /// The statement as DataFusion printed it back (normalised whitespace and keywords). May
    /// hold literals a user typed (names, MRNs): never log it.
    pub text: String,
    /// Hex SHA-256 of [`text`](Self::text): how the audit trail names the query.
    pub sha256: String,
    /// The lake tables it reads, sorted: views and table functions are read through to the
    /// tables they are built on (a view built from the holds at opening reads only `records`).
    pub tables: Vec<String>,
    /// The tables and views as the statement names them (no CTEs, no table functions), sorted.
    pub named: Vec<String>,
    plan: LogicalPlan,
}

impl Statement {
    /// The logical plan (not optimised).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }
}

/// The lake as SQL: one DataFusion session, read-only and memory-limited, with the Delta tables
/// under a lake root, Retain's views over them and its functions (`docs/sql.md`).
///
/// Views and functions that depend on holds are built from the holds active when the catalog
/// opens; reopen it to see holds placed or released since.
pub struct Catalog {
    ctx: SessionContext,
    tables: Vec<LakeTable>,
    holds: Vec<ActiveHold>,
    today: NaiveDate,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("tables", &self.tables)
            .field("holds", &self.holds.len())
            .field("today", &self.today)
            .finish_non_exhaustive()
    }
}

/// The location of table `name` under the lake root (a folder, `file://` or `s3://` URL).
pub fn table_location(root: &str, name: &str) -> String {
    if root.contains("://") {
        format!("{}/{name}", root.trim_end_matches('/'))
    } else {
        std::path::Path::new(root).join(name).display().to_string()
    }
}

/// The options the catalog runs every statement with: no DDL, no DML, no `SET` or other
/// statements: only queries (and `EXPLAIN`, `SHOW`, `DESCRIBE`).
pub fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn df(doing: &str) -> impl Fn(DataFusionError) -> Error + '_ {
    move |source| Error::Execute {
        doing: doing.to_owned(),
        source,
    }
}

/// `'text'` as a SQL literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Catalog {
    /// Opens the lake at `lake_root` (a folder, `file://` or `s3://` URL; `storage_options` as
    /// for `retain_lake::RecordsTable`): registers its tables, reads the active holds, and
    /// registers the views and functions. Creates nothing and writes nothing.
    #[instrument(skip_all)]
    pub async fn open(
        lake_root: &str,
        storage_options: HashMap<String, String>,
        options: CatalogOptions,
    ) -> Result<Self> {
        retain_lake::register_storage_handlers();
        let today = options.today.unwrap_or_else(|| Utc::now().date_naive());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
            .build_arc()
            .map_err(df("building the query runtime"))?;
        let mut config = SessionConfig::new().with_information_schema(true);
        // PostgreSQL's grammar, as psql users and `retain serve` clients write it (and so that
        // `details->>'via' = 'serve'` compares the text, as in PostgreSQL: the generic dialect
        // binds `=` tighter than `->>`). Hold conditions are parsed with it too.
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        // Measured on the 10M-record benchmark (docs/PERFORMANCE.md): text as plain Utf8 makes
        // lower() and grouping on text about a third cheaper than Utf8View, and reading each
        // small file's page index cost more than the pages it let a scan skip.
        let parquet = &mut config.options_mut().execution.parquet;
        parquet.schema_force_view_types = false;
        parquet.enable_page_index = false;
        // Partial aggregations grouped by dictionaries map the dictionaries to groups once per
        // batch (crate::group).
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(DictionaryAggregate))
            .build();
        // JSON functions and operators (`json_get_str(details, 'via')`, `details->>'via'`) for
        // the JSON text columns: audit details, manifests, certificates.
        datafusion_functions_json::register_all(&mut state)
            .map_err(df("registering the JSON functions"))?;
        let ctx = SessionContext::new_with_state(state);
        // Hold coverage `(a AND b) IS NOT FALSE` as two filters, so the scan can apply the
        // selective one while decoding (crate::simplify).
        ctx.add_optimizer_rule(Arc::new(SplitIsNotFalse));
        // The text tests of hold conditions (keywords, custodians, IS NOT FALSE) evaluated
        // without lower-casing columns (crate::text).
        ctx.add_optimizer_rule(Arc::new(RewriteTextPredicates::default()));

        let mut tables = Vec::new();
        let mut records: Option<Arc<dyn TableProvider>> = None;
        for (name, schema) in [
            (RECORDS_TABLE, records_schema()),
            (HOLDS_TABLE, holds_schema()),
            (MANIFESTS_TABLE, manifests_schema()),
            (DISPOSALS_TABLE, disposals_schema()),
            (AUDIT_TABLE, audit_schema()),
            (EVENTS_TABLE, events_schema()),
            (DEAD_LETTERS_TABLE, dead_letters_schema()),
        ] {
            let read = if name == RECORDS_TABLE {
                ReadAs {
                    dictionaries: &DICTIONARY_COLUMNS,
                    views: &VIEW_COLUMNS,
                }
            } else {
                ReadAs::default()
            };
            let (provider, table) = open_table(
                &ctx,
                lake_root,
                name,
                &schema,
                &storage_options,
                options.scan,
                read,
            )
            .await?;
            ctx.register_table(name, Arc::clone(&provider))
                .map_err(df("registering a table"))?;
            if name == RECORDS_TABLE {
                records = Some(provider);
            }
            tables.push(table);
        }
        let records = records.expect("records is among the tables");

        let mut this = Catalog {
            ctx,
            tables,
            holds: Vec::new(),
            today,
        };
        this.view(
            "current_holds",
            "SELECT h.* FROM holds h \
             WHERE h.revision = (SELECT max(i.revision) FROM holds i WHERE i.hold_id = h.hold_id)",
        )
        .await?;
        // docs/holds.md: a status other than `released` is read as active.
        this.view(
            "active_holds",
            "SELECT * FROM current_holds WHERE status <> 'released'",
        )
        .await?;
        this.holds = this.read_active_holds().await?;

        // Coverage: a hold covers a record when its condition is true or NULL.
        let records_df = DFSchema::try_from(records.schema().as_ref().clone())
            .map_err(df("reading the records schema"))?;
        let mut held: Option<Expr> = None;
        for h in &this.holds {
            let e = this
                .ctx
                .parse_sql_expr(&h.predicate, &records_df)
                .map_err(|e| Error::Hold {
                    hold: h.id.clone(),
                    reason: e.to_string().lines().next().unwrap_or_default().to_owned(),
                })?;
            let covered = Expr::IsNotFalse(Box::new(e));
            held = Some(match held {
                None => covered,
                Some(h) => h.or(covered),
            });
        }
        let held = held.unwrap_or_else(|| lit(false));
        let held_sql = if this.holds.is_empty() {
            "FALSE".to_owned()
        } else {
            this.holds
                .iter()
                .map(|h| covered_clause(&h.predicate))
                .collect::<Vec<_>>()
                .join(" OR ")
        };

        this.ctx
            .register_udf(ScalarUDF::new_from_impl(IsHeld::new()));
        this.ctx
            .register_udf(ScalarUDF::new_from_impl(YearsUntilDisposal::new(today)));
        this.ctx
            .register_function_rewrite(Arc::new(IsHeldRewrite { held: held.clone() }))
            .map_err(df("registering is_held"))?;
        this.ctx.register_udtf(
            DISPOSAL_CANDIDATES,
            Arc::new(DisposalCandidates {
                records: Arc::clone(&records),
                held,
                today,
            }),
        );

        let coverage = if this.holds.is_empty() {
            "SELECT CAST(NULL AS VARCHAR) AS hold_id, record_key FROM records WHERE FALSE"
                .to_owned()
        } else {
            this.holds
                .iter()
                .map(|h| {
                    format!(
                        "SELECT CAST({} AS VARCHAR) AS hold_id, record_key FROM records WHERE {}",
                        quote(&h.id),
                        covered_clause(&h.predicate)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        };
        this.view("hold_coverage", &coverage).await?;
        this.view(
            "records_on_hold",
            &format!("SELECT * FROM records WHERE {held_sql}"),
        )
        .await?;
        let until = today
            .checked_add_days(Days::new(u64::from(options.upcoming_days)))
            .unwrap_or(NaiveDate::MAX);
        this.view(
            "upcoming_disposals",
            &format!(
                "SELECT CAST(date_trunc('month', CAST(retain_until AS TIMESTAMP)) AS DATE) AS month, \
                 category, governing, count(*) AS records, \
                 sum(CASE WHEN {held_sql} THEN 1 ELSE 0 END) AS held \
                 FROM records \
                 WHERE retention_status = 'scheduled' AND retain_until > DATE '{today}' \
                 AND retain_until <= DATE '{until}' \
                 GROUP BY 1, 2, 3"
            ),
        )
        .await?;
        // docs/events.md: a contract terminated with `return` or `transfer` is recorded on every
        // record it matched (at landing or after) as the obligation entry
        // `event.contract_terminated.<action>` citing the event id: the messages to hand over.
        this.view(
            "ba_manifests",
            "SELECT o['citation'] AS event_id, substr(o['id'], 27) AS action, \
             o['until'] AS terminated, tenant, mailbox, message_id, thread_id, record_key, \
             category, retention_status, retain_until \
             FROM (SELECT tenant, mailbox, message_id, thread_id, record_key, category, \
             retention_status, retain_until, unnest(obligations) AS o FROM records) \
             WHERE o['status'] = 'event' \
             AND o['id'] IN ('event.contract_terminated.return', 'event.contract_terminated.transfer')",
        )
        .await?;
        debug!(holds = this.holds.len(), "catalog open");
        Ok(this)
    }

    async fn view(&self, name: &str, sql: &str) -> Result<()> {
        let doing = format!("building the {name} view");
        let plan = self
            .ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(df(&doing))?;
        self.ctx
            .register_table(name, Arc::new(ViewTable::new(plan, Some(sql.to_owned()))))
            .map_err(df(&doing))?;
        Ok(())
    }

    async fn read_active_holds(&self) -> Result<Vec<ActiveHold>> {
        let doing = "reading the active holds";
        let batches = self
            .ctx
            .sql("SELECT CAST(hold_id AS VARCHAR), CAST(predicate AS VARCHAR) FROM active_holds ORDER BY 1")
            .await
            .map_err(df(doing))?
            .collect()
            .await
            .map_err(df(doing))?;
        let mut out = Vec::new();
        for b in &batches {
            let as_text = |i: usize| {
                datafusion::arrow::compute::cast(
                    b.column(i),
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )
                .map_err(|e| df(doing)(e.into()))
            };
            let (ids, predicates) = (as_text(0)?, as_text(1)?);
            let (ids, predicates) = (ids.as_string::<i32>(), predicates.as_string::<i32>());
            out.extend((0..b.num_rows()).map(|i| ActiveHold {
                id: ids.value(i).to_owned(),
                predicate: predicates.value(i).to_owned(),
            }));
        }
        Ok(out)
    }

    /// The DataFusion session (for a server or a report that runs its own plans; run user SQL
    /// through [`plan`](Self::plan) so the read-only options apply).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// The lake tables, in [`TABLES`] order.
    pub fn tables(&self) -> &[LakeTable] {
        &self.tables
    }

    /// The `sql_query` audit entry for `st`, run by `actor` (`rows` is `None` when it failed):
    /// the lake tables it read as the target, their versions, the statement's hash and row
    /// count, then the `extra` keys (how it came in). Never the query text: literals in it (a
    /// name, an MRN) can be PHI; the hash identifies it.
    pub fn audit_entry(
        &self,
        st: &Statement,
        actor: &str,
        rows: Option<usize>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> AuditEntry {
        let versions: BTreeMap<&str, Option<u64>> = self
            .tables
            .iter()
            .filter(|t| st.tables.contains(&t.name))
            .map(|t| (t.name.as_str(), t.version))
            .collect();
        let target = if st.tables.is_empty() {
            "none".to_owned()
        } else {
            st.tables.join(",")
        };
        let mut details = serde_json::json!({
            "query_sha256": st.sha256,
            "statement": st.index,
            "tables": st.tables,
            "named": st.named,
            "versions": versions,
            "outcome": if rows.is_some() { "ok" } else { "failed" },
            "rows": rows,
        });
        if let Some(d) = details.as_object_mut() {
            d.extend(extra);
        }
        let mut entry = AuditEntry::new(AuditAction::SqlQuery, actor, Utc::now(), target)
            .with_details(&details);
        if let Some(v) = versions.get(RECORDS_TABLE).copied().flatten() {
            entry = entry.with_table_version(v as i64);
        }
        entry
    }

    /// One lake table by name.
    pub fn table(&self, name: &str) -> Option<&LakeTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The holds in force when the catalog opened (what `is_held()` and the views evaluate).
    pub fn active_holds(&self) -> &[ActiveHold] {
        &self.holds
    }

    /// The day taken as today.
    pub fn today(&self) -> NaiveDate {
        self.today
    }

    /// Parses `sql` (one or more statements separated by `;`) and plans every statement, all
    /// before any runs: a syntax error anywhere, an unknown name or a statement that would
    /// change something (DDL, DML, `SET`, ...) is refused and nothing runs.
    ///
    /// A statement's result has text as plain `Utf8`: the columns the scan reads as
    /// dictionaries ([`DICTIONARY_COLUMNS`]) or views ([`VIEW_COLUMNS`]) are cast back at the
    /// end of the plan, where only the result's rows remain, so renderers and clients see the
    /// types `records` is written with.
    pub async fn plan(&self, sql: &str) -> Result<Vec<Statement>> {
        let statements = DFParserBuilder::new(sql)
            .with_dialect(&PostgreSqlDialect {})
            .build()
            .and_then(|mut p| p.parse_statements())
            .map_err(|source| Error::Parse { source })?;
        let state = self.ctx.state();
        let options = sql_options();
        let mut out = Vec::with_capacity(statements.len());
        for (i, statement) in statements.into_iter().enumerate() {
            let index = i + 1;
            let text = statement.to_string();
            let named: BTreeSet<String> = state
                .resolve_table_references(&statement)
                .map_err(|source| Error::Plan {
                    statement: index,
                    source,
                })?
                .iter()
                .map(|t| t.table().to_owned())
                .collect();
            let plan = state
                .statement_to_plan(statement)
                .await
                .map_err(|source| Error::Plan {
                    statement: index,
                    source,
                })?;
            if let Err(e) = options.verify_plan(&plan) {
                return Err(Error::ReadOnly {
                    statement: index,
                    what: e
                        .strip_backtrace()
                        .trim_start_matches("Error during planning: ")
                        .to_owned(),
                });
            }
            let plan = plain_text(plan).map_err(|source| Error::Plan {
                statement: index,
                source,
            })?;
            // The analyzer and optimizer find what the SQL planner leaves (is_held() without
            // the records columns, type errors) before anything runs.
            state.optimize(&plan).map_err(|source| Error::Plan {
                statement: index,
                source,
            })?;
            out.push(Statement {
                index,
                sha256: sha256_hex(&text),
                text,
                tables: tables_read(&plan),
                named: named.into_iter().collect(),
                plan,
            });
        }
        Ok(out)
    }

    /// Runs a planned statement and collects its result.
    pub async fn execute(&self, statement: &Statement) -> Result<Vec<RecordBatch>> {
        let doing = format!("running statement {}", statement.index);
        self.ctx
            .execute_logical_plan(statement.plan.clone())
            .await
            .map_err(df(&doing))?
            .collect()
            .await
            .map_err(df(&doing))
    }

    /// Runs a planned statement as a stream of batches (for results too large to collect).
    pub async fn stream(&self, statement: &Statement) -> Result<SendableRecordBatchStream> {
        let doing = format!("running statement {}", statement.index);
        self.ctx
            .execute_logical_plan(statement.plan.clone())
            .await
            .map_err(df(&doing))?
            .execute_stream()
            .await
            .map_err(df(&doing))
    }

    /// Plans and runs `sql`, which must be exactly one statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let statements = self.plan(sql).await?;
        match statements.as_slice() {
            [one] => self.execute(one).await,
            other => Err(Error::Argument {
                reason: format!("expected one SQL statement, found {}", other.len()),
            }),
        }
    }
}

/// Opens table `name` under `root` read-only; a table the lake does not have is an empty
/// in-memory table with its known columns. The Parquet scan reads text columns as `read` says.
async fn open_table(
    ctx: &SessionContext,
    root: &str,
    name: &str,
    schema: &SchemaRef,
    storage_options: &HashMap<String, String>,
    scan: TableScan,
    read: ReadAs<'_>,
) -> Result<(Arc<dyn TableProvider>, LakeTable)> {
    let location = table_location(root, name);
    let empty = |shown: String| -> Result<(Arc<dyn TableProvider>, LakeTable)> {
        let table = MemTable::try_new(Arc::clone(schema), vec![vec![]])
            .map_err(df("registering an empty table"))?;
        let info = LakeTable {
            name: name.to_owned(),
            url: shown,
            version: None,
            scan: TableScan::Parquet,
        };
        Ok((Arc::new(table), info))
    };
    // A local table is there when its log is (resolving a local location creates the folder).
    let local = match location.strip_prefix("file://") {
        Some(p) => Some(std::path::PathBuf::from(p)),
        None if !location.contains("://") => Some(std::path::PathBuf::from(&location)),
        None => None,
    };
    if local.is_some_and(|p| !p.join("_delta_log").is_dir()) {
        return empty(location);
    }
    let url = ensure_table_uri(&location).map_err(|e| Error::Argument {
        reason: format!("{location} is not a table location: {e}"),
    })?;
    let shown = redact(&url);
    let open_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
        table: name.to_owned(),
        url: shown.clone(),
        source,
    };
    let mut table = DeltaTableBuilder::from_url(url)
        .and_then(|b| b.with_storage_options(storage_options.clone()).build())
        .map_err(|e| open_err(Box::new(e)))?;
    if !table
        .verify_deltatable_existence()
        .await
        .map_err(|e| open_err(Box::new(e)))?
    {
        return empty(shown);
    }
    table.load().await.map_err(|e| open_err(Box::new(e)))?;
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| open_err(Box::new(e)))?;
    let delta = table
        .table_provider()
        .await
        .map_err(|e| open_err(Box::new(e)))?;
    // The Parquet scan shows the table with the schema deltalake gives it under this session's
    // settings (text as Utf8View unless `schema_force_view_types` is off), low-cardinality
    // text as dictionaries, long searched text as views.
    let parquet = match scan {
        TableScan::Parquet => {
            let schema = table
                .table_provider()
                .with_session(Arc::new(ctx.state()))
                .await
                .map_err(|e| open_err(Box::new(e)))?
                .schema();
            SnapshotTable::try_new(&table, with_read_types(&schema, read))
                .inspect_err(|reason| debug!(table = name, reason, "read through deltalake"))
                .ok()
        }
        TableScan::Delta => None,
    };
    let (provider, scan): (Arc<dyn TableProvider>, _) = match parquet {
        Some(p) => (Arc::new(p), TableScan::Parquet),
        None => (Arc::new(DeltaFallback { inner: delta }), TableScan::Delta),
    };
    let info = LakeTable {
        name: name.to_owned(),
        url: shown,
        version: table.version(),
        scan,
    };
    Ok((provider, info))
}

/// `data_type` with every dictionary in it (at any depth) replaced by its value type and every
/// `Utf8View` by `Utf8`; `None` when it has neither.
fn plain_type(data_type: &DataType) -> Option<DataType> {
    let field = |f: &FieldRef| -> Option<FieldRef> {
        plain_type(f.data_type()).map(|t| Arc::new(f.as_ref().clone().with_data_type(t)))
    };
    match data_type {
        DataType::Dictionary(_, value) => {
            Some(plain_type(value).unwrap_or_else(|| value.as_ref().clone()))
        }
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::List(f) => field(f).map(DataType::List),
        DataType::LargeList(f) => field(f).map(DataType::LargeList),
        DataType::FixedSizeList(f, n) => field(f).map(|f| DataType::FixedSizeList(f, *n)),
        DataType::Struct(fields) => {
            let plain: Vec<Option<FieldRef>> = fields.iter().map(field).collect();
            plain.iter().any(Option::is_some).then(|| {
                DataType::Struct(
                    fields
                        .iter()
                        .zip(plain)
                        .map(|(f, p)| p.unwrap_or_else(|| Arc::clone(f)))
                        .collect(),
                )
            })
        }
        _ => None,
    }
}

/// `plan` with a projection on top that casts every column holding dictionaries or views to the
/// plain type ([`plain_type`]), and writes a JSON value (`json_get`, `->`: an Arrow union,
/// which neither the wire nor CSV can carry) as its JSON text; `plan` itself when no column
/// needs either.
fn plain_text(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    let schema = Arc::clone(plan.schema());
    let json = |t: &DataType| *t == *datafusion_functions_json::JSON_UNION_DATA_TYPE;
    let casts: Vec<Option<DataType>> = schema
        .fields()
        .iter()
        .map(|f| {
            if json(f.data_type()) {
                Some(DataType::Utf8)
            } else {
                plain_type(f.data_type())
            }
        })
        .collect();
    if casts.iter().all(Option::is_none) {
        return Ok(plan);
    }
    let exprs = schema.iter().zip(casts).map(|((qualifier, field), plain)| {
        let column = Expr::Column(Column::from((qualifier, field)));
        let column = if json(field.data_type()) {
            datafusion_functions_json::udfs::json_union_to_text_udf().call(vec![column])
        } else {
            column
        };
        match plain {
            Some(to) => cast(column, to).alias_qualified(qualifier.cloned(), field.name()),
            None => column,
        }
    });
    LogicalPlanBuilder::from(plan).project(exprs)?.build()
}

/// The tables a plan scans, subqueries included (views built on lake tables are inlined by
/// the planner, so this names the lake tables they read).
fn tables_read(plan: &LogicalPlan) -> Vec<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            names.insert(match scan.table_name.schema() {
                Some(schema @ "information_schema") => {
                    format!("{schema}.{}", scan.table_name.table())
                }
                _ => scan.table_name.table().to_owned(),
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    #[test]
    fn dictionaries_and_views_are_found_and_replaced_at_any_depth() {
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
        assert_eq!(plain_type(&DataType::Utf8), None);
        assert_eq!(plain_type(&list(DataType::Int64)), None);
        assert_eq!(plain_type(&dictionary), Some(DataType::Utf8));
        assert_eq!(plain_type(&DataType::Utf8View), Some(DataType::Utf8));
        assert_eq!(
            plain_type(&list(DataType::Utf8View)),
            Some(list(DataType::Utf8))
        );
        assert_eq!(
            plain_type(&list(dictionary.clone())),
            Some(list(DataType::Utf8))
        );
        let fields = |a: DataType| {
            DataType::Struct(
                vec![
                    Field::new("a", a, true),
                    Field::new("b", DataType::Int64, false),
                ]
                .into(),
            )
        };
        assert_eq!(
            plain_type(&fields(dictionary)),
            Some(fields(DataType::Utf8))
        );
    }
}
