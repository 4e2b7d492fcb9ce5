//! Query results and reports as text: an aligned table, CSV, JSON, and (reports) one
//! self-contained HTML file with an inline SVG chart. `retain sql` and `retain report` print
//! with these, so both show the same values the same way (`docs/sql.md`, `docs/reports.md`).
//!
//! Values are formatted by Arrow's display formatters: dates `2026-12-04`, timestamps RFC 3339,
//! NULL as an empty cell (`null` in JSON). Everything written into HTML or SVG is escaped.

use std::fmt::Write as _;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::error::DataFusionError;

use crate::error::{Error, Result};
use crate::reports::{Chart, ReportOutput};

fn arrow(doing: &'static str) -> impl Fn(ArrowError) -> Error {
    move |e| Error::Execute {
        doing: doing.to_owned(),
        source: DataFusionError::ArrowError(Box::new(e), None),
    }
}

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

/// Quotes a CSV field when needed (RFC 4180: a comma, a quote or a line break).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Escapes text for HTML and SVG (element content and quoted attributes).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The batches as one aligned table (Arrow's pretty printer) and a row count line.
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let t = pretty_format_batches_with_schema(schema.clone(), batches)
        .map_err(arrow("formatting the result"))?;
    Ok(format!("{t}\n{}\n", plural(rows, "row")))
}

/// Every cell as display text (`None` for NULL), row by row.
fn cells(batches: &[RecordBatch]) -> Result<Vec<Vec<Option<String>>>> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow("formatting the result"))?;
        for i in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| (!c.is_null(i)).then(|| f.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The batches as CSV: a header line, then one line per row; NULL is an empty field.
pub fn csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
    let header: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| csv_field(f.name()))
        .collect();
    let mut out = header.join(",");
    out.push('\n');
    for row in cells(batches)? {
        let line: Vec<String> = row
            .iter()
            .map(|c| c.as_deref().map(csv_field).unwrap_or_default())
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The batches as JSON Lines: one object per row with every column (NULL as `null`).
pub fn json_lines(batches: &[RecordBatch]) -> Result<String> {
    let mut w = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    for b in batches {
        w.write(b).map_err(arrow("formatting the result as JSON"))?;
    }
    w.finish().map_err(arrow("formatting the result as JSON"))?;
    Ok(String::from_utf8_lossy(&w.into_inner()).into_owned())
}

fn meta_line(r: &ReportOutput) -> String {
    format!(
        "As of {} (today {}); read: {}.",
        r.as_of,
        r.today,
        if r.tables.is_empty() {
            "nothing".to_owned()
        } else {
            r.tables.join(", ")
        }
    )
}

/// A report as text: the title, the as-of line, the notes, then each section's heading and
/// table with its row count.
pub fn report_table(r: &ReportOutput) -> Result<String> {
    let mut out = format!("{}\n{}\n", r.title, meta_line(r));
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    for s in &r.sections {
        let _ = write!(out, "\n{}\n", s.heading);
        out.push_str(&table(&s.batch.schema(), std::slice::from_ref(&s.batch))?);
    }
    Ok(out)
}

/// A report as CSV: for each section, a `# heading` line, the header, the rows; a blank line
/// between sections. The first line is `# title (as of DATE)`.
pub fn report_csv(r: &ReportOutput) -> Result<String> {
    let mut out = format!("# {} (as of {})\n", r.title, r.as_of);
    for (i, s) in r.sections.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "# {}", s.heading);
        out.push_str(&csv(&s.batch.schema(), std::slice::from_ref(&s.batch))?);
    }
    Ok(out)
}

/// A report as one JSON object: `report`, `title`, `as_of`, `today`, `tables`, `notes` and
/// `sections` (each `heading`, `columns` and `rows`, one object per row, NULL as `null`).
pub fn report_json(r: &ReportOutput) -> Result<String> {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"report\": {},", json_string(r.report.name()));
    let _ = writeln!(out, "  \"title\": {},", json_string(&r.title));
    let _ = writeln!(out, "  \"as_of\": \"{}\",", r.as_of);
    let _ = writeln!(out, "  \"today\": \"{}\",", r.today);
    let _ = writeln!(out, "  \"tables\": [{}],", list(&r.tables));
    let _ = writeln!(out, "  \"notes\": [{}],", list(&r.notes));
    out.push_str("  \"sections\": [");
    for (i, s) in r.sections.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let columns: Vec<String> = s
            .batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let _ = write!(
            out,
            "    {{\"heading\": {}, \"columns\": [{}], \"rows\": [",
            json_string(&s.heading),
            list(&columns)
        );
        let rows = json_lines(std::slice::from_ref(&s.batch))?;
        let rows: Vec<&str> = rows.lines().collect();
        if !rows.is_empty() {
            out.push_str("\n      ");
            out.push_str(&rows.join(",\n      "));
            out.push_str("\n    ");
        }
        out.push_str("]}");
    }
    out.push_str(if r.sections.is_empty() {
        "]\n"
    } else {
        "\n  ]\n"
    });
    out.push_str("}\n");
    Ok(out)
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1a1a1a;margin:2rem auto;max-width:64rem;padding:0 1rem;line-height:1.4}
h1{font-size:1.5rem;margin:0 0 .25rem}
h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}
.meta{color:#555;margin:0 0 .75rem}
.notes{color:#333;font-size:.9rem;padding-left:1.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.25rem 0}
th,td{border:1px solid #bbb;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#eee}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.null{color:#999}
tbody tr:nth-child(even){background:#f7f7f7}
.count{color:#555;font-size:.8rem;margin:.2rem 0 0}
figure{margin:1rem 0}
svg{max-width:100%;height:auto}
section{overflow-x:auto}
@media print{body{margin:0;max-width:none}section{overflow:visible}table{font-size:.7rem}h2{break-after:avoid}tr,figure{break-inside:avoid}*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
";

/// A report as one self-contained HTML page (inline CSS, an inline SVG chart when the report
/// has one, no scripts or external assets), readable on screen and on paper.
pub fn report_html(r: &ReportOutput) -> Result<String> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"meta\">{}</p>\n",
        escape_html(&r.title),
        escape_html(&r.title),
        escape_html(&meta_line(r))
    );
    if !r.notes.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for n in &r.notes {
            let _ = writeln!(out, "<li>{}</li>", escape_html(n));
        }
        out.push_str("</ul>\n");
    }
    if let Some(chart) = &r.chart {
        let _ = write!(out, "<figure>\n{}</figure>\n", chart_svg(chart));
    }
    for s in &r.sections {
        let _ = writeln!(
            out,
            "<section>\n<h2>{}</h2>\n{}</section>",
            escape_html(&s.heading),
            html_table(&s.batch)?
        );
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

fn html_table(b: &RecordBatch) -> Result<String> {
    let schema = b.schema();
    let numeric: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_numeric())
        .collect();
    let class = |i: usize| if numeric[i] { " class=\"num\"" } else { "" };
    let mut out = String::from("<table>\n<thead><tr>");
    for (i, f) in schema.fields().iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", class(i), escape_html(f.name()));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in cells(std::slice::from_ref(b))? {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            match c {
                Some(v) => {
                    let _ = write!(out, "<td{}>{}</td>", class(i), escape_html(v));
                }
                None => out.push_str("<td class=\"null\"></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    let _ = write!(
        out,
        "</tbody>\n</table>\n<p class=\"count\">{}</p>\n",
        plural(b.num_rows(), "row")
    );
    Ok(out)
}

/// Colours for chart series, in order (Okabe–Ito, then more; distinguishable in print).
pub const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#332288",
    "#999999", "#8C564B", "#17BECF", "#BCBD22",
];

/// A round step for about `ticks` intervals up to `max` (1, 2 or 5 times a power of ten).
fn nice_step(max: u64, ticks: u64) -> u64 {
    let raw = max.div_ceil(ticks.max(1)).max(1);
    let mut power = 1u64;
    while power.saturating_mul(10) <= raw {
        power *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10 * power)
}

/// The chart as an inline SVG: one stacked bar per label (one `<rect class="bar">` per
/// non-zero segment, with a `<title>` tooltip), the total above each bar, a y axis with
/// gridlines, x labels and a legend.
pub fn chart_svg(c: &Chart) -> String {
    const WIDTH: f64 = 960.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 40.0;
    const PLOT_HEIGHT: f64 = 300.0;
    const X_LABELS: f64 = 64.0;
    const LEGEND_ROW: f64 = 22.0;
    const LEGEND_COLUMNS: usize = 4;
    let legend_rows = c.series.len().div_ceil(LEGEND_COLUMNS).max(1);
    let height = TOP + PLOT_HEIGHT + X_LABELS + legend_rows as f64 * LEGEND_ROW + 8.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let bottom = TOP + PLOT_HEIGHT;
    let totals = c.totals();
    let max = totals.iter().copied().max().unwrap_or(0);
    let step = nice_step(max, 5);
    let top_value = max.div_ceil(step).max(1) * step;
    let y = |v: u64| bottom - v as f64 / top_value as f64 * PLOT_HEIGHT;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"{}\" font-family=\"system-ui, sans-serif\" font-size=\"12\">",
        escape_html(&c.title)
    );
    let _ = writeln!(s, "<title>{}</title>", escape_html(&c.title));
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape_html(&c.title)
    );
    // Gridlines and y labels.
    let mut v = 0;
    while v <= top_value {
        let yy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"{}\" stroke-width=\"1\"/>",
            WIDTH - RIGHT,
            if v == 0 { "#333" } else { "#ddd" }
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            LEFT - 6.0,
            yy + 4.0
        );
        v += step;
    }
    let _ = writeln!(
        s,
        "<text transform=\"rotate(-90)\" x=\"{:.1}\" y=\"16\" text-anchor=\"middle\">{}</text>",
        -(TOP + PLOT_HEIGHT / 2.0),
        escape_html(&c.y_label)
    );
    // Bars.
    let n = c.labels.len().max(1);
    let band = plot_width / n as f64;
    let bar = band * 0.7;
    for (i, label) in c.labels.iter().enumerate() {
        let x = LEFT + band * i as f64 + (band - bar) / 2.0;
        let mut stacked = 0u64;
        for (k, series) in c.series.iter().enumerate() {
            let value = series.values.get(i).copied().unwrap_or(0);
            if value == 0 {
                continue;
            }
            let (y0, y1) = (y(stacked), y(stacked + value));
            stacked += value;
            let _ = writeln!(
                s,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"0.5\"><title>{}: {} {}</title></rect>",
                y0 - y1,
                PALETTE[k % PALETTE.len()],
                escape_html(label),
                value,
                escape_html(&series.name)
            );
        }
        if totals[i] > 0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                x + bar / 2.0,
                y(totals[i]) - 3.0,
                totals[i]
            );
        }
        let lx = x + bar / 2.0;
        let ly = bottom + 12.0;
        let _ = writeln!(
            s,
            "<text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" font-size=\"11\" transform=\"rotate(-45 {lx:.1} {ly:.1})\">{}</text>",
            escape_html(label)
        );
    }
    if max == 0 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">Nothing comes due in this period.</text>",
            LEFT + plot_width / 2.0,
            TOP + PLOT_HEIGHT / 2.0
        );
    }
    // Legend.
    let legend_top = bottom + X_LABELS;
    let column = plot_width / LEGEND_COLUMNS as f64;
    for (k, series) in c.series.iter().enumerate() {
        let lx = LEFT + column * (k % LEGEND_COLUMNS) as f64;
        let ly = legend_top + LEGEND_ROW * (k / LEGEND_COLUMNS) as f64;
        let _ = writeln!(
            s,
            "<rect class=\"swatch\" x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            PALETTE[k % PALETTE.len()],
            lx + 18.0,
            ly + 10.0,
            escape_html(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_quoting() {
        assert_eq!(
            escape_html("<a href=\"x\">Tom & Jerry's</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0, 5), 1);
        assert_eq!(nice_step(7, 5), 2);
        assert_eq!(nice_step(23, 5), 5);
        assert_eq!(nice_step(130, 5), 50);
        assert_eq!(nice_step(1000, 5), 200);
    }
}
