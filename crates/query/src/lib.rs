//! Retain's lake as SQL: a [`Catalog`] opens one DataFusion session over the Delta tables under
//! a lake root (`records`, `holds`, `manifests`, `disposals`, `audit`), adds views
//! (`current_holds`, `active_holds`, `hold_coverage`, `records_on_hold`,
//! `upcoming_disposals`) and functions (`is_held()`, `years_until_disposal(...)`, the
//! `disposal_candidates(as_of)` table function), limits the memory its queries may use, and
//! refuses anything but queries. `docs/sql.md` is the reference; `retain sql` and the SQL
//! endpoint build on it. [`reports`] defines the standard reports (`docs/reports.md`) and
//! [`render`] prints results and reports as a table, CSV, JSON or HTML.
//!
//! The session has three rewrites of its own, each giving DataFusion's answers faster: hold
//! coverage split into separate filters (`simplify`), the text tests hold conditions write
//! evaluated without lower-casing columns (`text`), and the partial step of a `GROUP BY` on
//! dictionary columns computed by dictionary (`group`). docs/PERFORMANCE.md has the figures.
//!
//! Hold coverage follows `retain-govern` exactly: a hold covers a record when its condition is
//! true or NULL; a record is a disposal candidate when it is scheduled, its `retain_until` is on
//! or before the cut-off (the as-of date, never after today) and no active hold covers it.

mod catalog;
mod error;
mod functions;
mod group;
pub mod render;
pub mod reports;
mod scan;
mod simplify;
mod text;

pub use catalog::{
    ActiveHold, Catalog, CatalogOptions, DEFAULT_MEMORY_LIMIT, DEFAULT_UPCOMING_DAYS,
    DICTIONARY_COLUMNS, LakeTable, Statement, TABLES, TableScan, VIEW_COLUMNS, VIEWS, sha256_hex,
    sql_options, table_location,
};
pub use error::{Error, Result};
pub use functions::{DAYS_PER_YEAR, DISPOSAL_CANDIDATES, IS_HELD, YEARS_UNTIL_DISPOSAL};
pub use reports::{Chart, Report, ReportOutput, Section, Series, run_report};
pub use scan::READER_FEATURES;

/// Re-exported so callers use the exact DataFusion (and Arrow) the catalog was built with.
pub use datafusion;
