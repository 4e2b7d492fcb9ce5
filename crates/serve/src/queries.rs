//! Every statement a client sends, through the connection's catalog: planned by
//! `Catalog::plan` (read-only), run, audited, then encoded for the wire.
//!
//! Installed as a `datafusion-postgres` query hook that answers every statement (after its
//! transaction hook, which acknowledges `BEGIN`/`COMMIT`/`ROLLBACK`), so the session service's
//! own SessionContext, an empty one, never runs anything.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::pgwire;
use datafusion_postgres::{QueryHook, hooks::HookClient};
use pgwire::api::ClientInfo;
use pgwire::api::portal::Format;
use pgwire::api::results::{QueryResponse, Response};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use retain_query::Statement;
use retain_query::datafusion::arrow::array::RecordBatch;
use retain_query::datafusion::common::ParamValues;
use retain_query::datafusion::logical_expr::LogicalPlan;
use retain_query::datafusion::prelude::SessionContext;
use retain_query::datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use tracing::{debug, error};

use crate::login::Session;
use crate::server::Shared;
use crate::users::Role;

/// The hook that runs every statement through the catalog.
pub(crate) struct Queries {
    pub shared: Arc<Shared>,
}

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// A catalog error with the SQLSTATE a PostgreSQL client expects for it.
fn query_error(e: retain_query::Error) -> PgWireError {
    use retain_query::Error as E;
    let code = match &e {
        E::Parse { .. } => "42601",
        E::Plan { .. } => "42000",
        // read_only_sql_transaction
        E::ReadOnly { .. } => "25006",
        E::Argument { .. } => "22023",
        E::Open { .. } | E::Hold { .. } => "58000",
        E::Execute { .. } if e.is_bad_input() => "22000",
        E::Execute { .. } => "XX000",
    };
    user_error(code, e.to_string())
}

fn session(client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| user_error("28000", "not logged in"))
}

impl Queries {
    /// Plans one statement on the session's catalog; analysts may not EXPLAIN.
    async fn plan(&self, session: &Session, statement: &SqlStatement) -> PgWireResult<Statement> {
        let text = statement.to_string();
        let mut planned = session.catalog.plan(&text).await.map_err(query_error)?;
        if planned.len() != 1 {
            return Err(user_error(
                "42601",
                format!("expected one statement, found {}", planned.len()),
            ));
        }
        let st = planned.remove(0);
        if session.role == Role::Analyst
            && matches!(st.plan(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_))
        {
            return Err(user_error(
                "42501",
                "EXPLAIN is not available to the analyst role: plans print the holds' conditions, which can name patients",
            ));
        }
        Ok(st)
    }

    /// Runs a planned statement (with its parameters bound), audits it, and encodes the rows.
    async fn run(
        &self,
        session: &Session,
        st: &Statement,
        plan: LogicalPlan,
    ) -> PgWireResult<Response> {
        let schema = plan.schema().inner().clone();
        let ctx = session.catalog.session();
        let result = async { ctx.execute_logical_plan(plan).await?.collect().await }.await;
        let rows = result
            .as_ref()
            .map(|b| b.iter().map(RecordBatch::num_rows).sum::<usize>())
            .ok();
        // The entry is written before any row is sent: no unaudited reads.
        self.audit(session, st, rows).await?;
        let batches = result.map_err(|source| {
            query_error(retain_query::Error::Execute {
                doing: "running the statement".to_owned(),
                source,
            })
        })?;
        debug!(user = %session.user, rows = rows.unwrap_or(0), "statement ran");
        let fields = Arc::new(arrow_schema_to_pg_fields(
            schema.as_ref(),
            &Format::UnifiedText,
            None,
        )?);
        let encoding = Arc::clone(&fields);
        let rows = batches
            .into_iter()
            .flat_map(move |b| encode_recordbatch(Arc::clone(&encoding), b));
        Ok(Response::Query(QueryResponse::new(
            fields,
            futures::stream::iter(rows),
        )))
    }

    async fn audit(
        &self,
        session: &Session,
        st: &Statement,
        rows: Option<usize>,
    ) -> PgWireResult<()> {
        let mut how = serde_json::Map::new();
        how.insert("via".into(), "serve".into());
        how.insert("role".into(), session.role.as_str().into());
        how.insert("client".into(), session.client.clone().into());
        let entry = session.catalog.audit_entry(st, &session.user, rows, how);
        self.shared
            .audit
            .lock()
            .await
            .append(&[entry])
            .await
            .map_err(|e| {
                error!(user = %session.user, error = %e, "the sql_query audit entry could not be written; result withheld");
                user_error(
                    "58000",
                    format!("the audit trail could not be written, so the result is withheld: {e}"),
                )
            })?;
        Ok(())
    }
}

#[async_trait]
impl QueryHook for Queries {
    async fn handle_simple_query(
        &self,
        statement: &SqlStatement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(
            async {
                let session = session(client)?;
                let st = self.plan(&session, statement).await?;
                let plan = st.plan().clone();
                self.run(&session, &st, plan).await
            }
            .await,
        )
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &SqlStatement,
        _session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Some(
            async {
                let session = session(client)?;
                Ok(self.plan(&session, statement).await?.plan().clone())
            }
            .await,
        )
    }

    async fn handle_extended_query(
        &self,
        statement: &SqlStatement,
        logical_plan: &LogicalPlan,
        params: &ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(
            async {
                let session = session(client)?;
                // Planned again for the audit's tables and hash (the parse step's plan is the
                // one with the parameter types the client bound).
                let st = self.plan(&session, statement).await?;
                let plan = logical_plan
                    .clone()
                    .replace_params_with_values(params)
                    .map_err(|e| user_error("22023", format!("binding the parameters: {e}")))?;
                self.run(&session, &st, plan).await
            }
            .await,
        )
    }
}
