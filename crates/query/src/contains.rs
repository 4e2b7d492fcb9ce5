//! A logical rewrite the catalog's session adds to DataFusion's optimizer:
//! `strpos(lower(text), 'needle') > 0`, how a hold's keywords are written (retain-govern's hold
//! scope), becomes `retain_lower_contains(text, 'needle')`, which gives the same answer for
//! every row without building a lower-cased copy of the column.
//!
//! DataFusion evaluates the original by lower-casing every row into a new array, then
//! searching it. [`LowerContains`] lower-cases one row at a time into a reused buffer (ASCII
//! rows byte by byte; a row with other characters with `str::to_lowercase`, exactly as
//! DataFusion's `lower()` does, Unicode rules and final sigma included) and searches it with a
//! `memmem` finder built once per batch. Over `Utf8View` text it remembers the answer for
//! recent views, so text decoded from a Parquet dictionary page is searched about once per
//! distinct value. `NULL` stays `NULL`; an empty needle is found in every row, as `strpos`
//! finds it at 1.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericStringArray, OffsetSizeTrait, StringViewArray,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use memchr::memmem;

/// The function the rewrite calls (not registered: only the rewrite writes it).
pub(crate) const LOWER_CONTAINS: &str = "retain_lower_contains";

/// Rewrites `strpos(lower(x), 'needle') > 0` into [`LowerContains`] in every plan node.
#[derive(Debug)]
pub(crate) struct RewriteLowerContains {
    udf: Arc<ScalarUDF>,
}

impl Default for RewriteLowerContains {
    fn default() -> Self {
        Self {
            udf: Arc::new(ScalarUDF::new_from_impl(LowerContains::default())),
        }
    }
}

impl OptimizerRule for RewriteLowerContains {
    fn name(&self) -> &str {
        "retain_lower_contains"
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
        plan.map_expressions(|e| self.rewrite_expr(e))
    }
}

impl RewriteLowerContains {
    fn rewrite_expr(&self, expr: Expr) -> DfResult<Transformed<Expr>> {
        expr.transform_up(|e| {
            Ok(match lower_contains_parts(&e) {
                Some((text, needle)) => {
                    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                        Arc::clone(&self.udf),
                        vec![
                            text.clone(),
                            Expr::Literal(ScalarValue::Utf8(Some(needle)), None),
                        ],
                    )))
                }
                None => Transformed::no(e),
            })
        })
    }
}

/// `x` and the needle when `expr` is `strpos(lower(x), 'needle') > 0` (the `strpos` possibly
/// cast to a wider integer).
fn lower_contains_parts(expr: &Expr) -> Option<(&Expr, String)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Gt,
        right,
    }) = expr
    else {
        return None;
    };
    let zero = match right.as_ref() {
        Expr::Literal(v, _) => matches!(
            v,
            ScalarValue::Int8(Some(0))
                | ScalarValue::Int16(Some(0))
                | ScalarValue::Int32(Some(0))
                | ScalarValue::Int64(Some(0))
        ),
        _ => false,
    };
    if !zero {
        return None;
    }
    let strpos = match left.as_ref() {
        Expr::Cast(c) if c.field.data_type().is_integer() => c.expr.as_ref(),
        other => other,
    };
    let Expr::ScalarFunction(strpos) = strpos else {
        return None;
    };
    let [haystack, needle] = strpos.args.as_slice() else {
        return None;
    };
    if strpos.name() != "strpos" {
        return None;
    }
    let Expr::ScalarFunction(lower) = haystack else {
        return None;
    };
    let [text] = lower.args.as_slice() else {
        return None;
    };
    if lower.name() != "lower" {
        return None;
    }
    let needle = match needle {
        Expr::Literal(
            ScalarValue::Utf8(Some(n))
            | ScalarValue::LargeUtf8(Some(n))
            | ScalarValue::Utf8View(Some(n)),
            _,
        ) => n.clone(),
        _ => return None,
    };
    Some((text, needle))
}

/// `retain_lower_contains(text, 'needle')`: whether `lower(text)` contains `needle`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct LowerContains {
    signature: Signature,
}

impl Default for LowerContains {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for LowerContains {
    fn name(&self) -> &str {
        LOWER_CONTAINS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [text, needle] = args.args.as_slice() else {
            return exec_err!("{LOWER_CONTAINS} takes two arguments");
        };
        let needle = match needle {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(n))
                | ScalarValue::LargeUtf8(Some(n))
                | ScalarValue::Utf8View(Some(n)),
            ) => n.as_str(),
            _ => return exec_err!("{LOWER_CONTAINS} takes a text literal as its needle"),
        };
        match text {
            ColumnarValue::Array(a) => {
                Ok(ColumnarValue::Array(Arc::new(contains_array(a, needle)?)))
            }
            ColumnarValue::Scalar(s) => {
                let s = match s {
                    ScalarValue::Dictionary(_, v) => v.as_ref(),
                    s => s,
                };
                let found = match s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                        v.as_deref().map(|v| Search::new(needle).found_in(v))
                    }
                    ScalarValue::Null => None,
                    other => return exec_err!("{LOWER_CONTAINS} takes text, not {other:?}"),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(found)))
            }
        }
    }
}

/// Whether each row of a text array (any of Arrow's text types, or a dictionary of text:
/// searched once per dictionary value) contains `needle` once lower-cased ([`Search`]).
fn contains_array(array: &ArrayRef, needle: &str) -> DfResult<BooleanArray> {
    let mut search = Search::new(needle);
    fn strings<O: OffsetSizeTrait>(a: &GenericStringArray<O>, search: &mut Search) -> BooleanArray {
        a.iter().map(|v| v.map(|v| search.found_in(v))).collect()
    }
    Ok(match array.data_type() {
        DataType::Utf8 => strings(array.as_string::<i32>(), &mut search),
        DataType::LargeUtf8 => strings(array.as_string::<i64>(), &mut search),
        DataType::Utf8View => views(array.as_string_view(), &mut search),
        DataType::Dictionary(_, _) => {
            let d = array.as_any_dictionary();
            let values = contains_array(d.values(), needle)?;
            let found = take(&values, d.keys(), None)?;
            found.as_boolean().clone()
        }
        other => return exec_err!("{LOWER_CONTAINS} takes text, not {other}"),
    })
}

/// Answers by view remembered, direct-mapped: this many entries (a power of two; tests use
/// few, so that different views share entries).
const VIEW_CACHE: usize = if cfg!(test) { 4 } else { 1024 };

/// [`Search::found_in`] for each row of a `Utf8View` array. Rows with the same view (the same
/// bytes of the same buffer, or the same short string held inline) have the same answer, so
/// the last answer for each of a few views is kept: text the Parquet reader decoded from a
/// dictionary page repeats its views, and is then searched about once per distinct value.
fn views(array: &StringViewArray, search: &mut Search) -> BooleanArray {
    let mut cache: [Option<(u128, bool)>; VIEW_CACHE] = [None; VIEW_CACHE];
    array
        .views()
        .iter()
        .enumerate()
        .map(|(i, &view)| {
            if array.is_null(i) {
                return None;
            }
            let mixed = (view as u64 ^ (view >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let slot = (mixed >> (64 - VIEW_CACHE.trailing_zeros())) as usize;
            if let Some((seen, found)) = cache[slot]
                && seen == view
            {
                return Some(found);
            }
            let found = search.found_in(array.value(i));
            cache[slot] = Some((view, found));
            Some(found)
        })
        .collect()
}

/// One needle, searched for in rows lower-cased as DataFusion's `lower()` does (Rust's
/// `to_lowercase`).
struct Search<'a> {
    needle: &'a str,
    finder: memmem::Finder<'a>,
    /// An ASCII row, lower-cased.
    lowered: Vec<u8>,
}

impl<'a> Search<'a> {
    fn new(needle: &'a str) -> Self {
        Self {
            needle,
            finder: memmem::Finder::new(needle.as_bytes()),
            lowered: Vec::new(),
        }
    }

    fn found_in(&mut self, text: &str) -> bool {
        if !text.is_ascii() {
            return text.to_lowercase().contains(self.needle);
        }
        self.lowered.clear();
        self.lowered
            .extend(text.as_bytes().iter().map(u8::to_ascii_lowercase));
        self.finder.find(&self.lowered).is_some()
    }
}

/// Whether `lower(text)` contains `needle`.
#[cfg(test)]
fn lower_contains(text: &str, needle: &str) -> bool {
    Search::new(needle).found_in(text)
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_keyword_pattern_is_found_and_others_are_not() {
        let strpos = datafusion::functions::unicode::expr_fn::strpos;
        let lower = datafusion::functions::string::expr_fn::lower;
        let e = strpos(lower(col("subject")), lit("referral")).gt(lit(0));
        let (text, needle) = lower_contains_parts(&e).expect("the pattern");
        assert_eq!(text, &col("subject"));
        assert_eq!(needle, "referral");
        for other in [
            strpos(lower(col("subject")), lit("referral")).gt(lit(1)),
            strpos(lower(col("subject")), lit("referral")).gt_eq(lit(0)),
            strpos(col("subject"), lit("referral")).gt(lit(0)),
            strpos(lower(col("subject")), col("needle")).gt(lit(0)),
        ] {
            assert!(lower_contains_parts(&other).is_none(), "{other}");
        }
    }

    #[test]
    fn unicode_rows_follow_to_lowercase() {
        // Final sigma, Turkish dotted capital I, the Kelvin sign.
        assert!(lower_contains("ΟΔΟΣ", "οδος") == "ΟΔΟΣ".to_lowercase().contains("οδος"));
        assert!(lower_contains("İstanbul", "i̇stan"));
        assert!(lower_contains("5 \u{212A}elvin", "kelvin"));
        assert!(!lower_contains("REFERRAL", "Referral"));
        assert!(lower_contains("", ""));
        assert!(!lower_contains("", "a"));
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "A", "r", "R", "e", "E", "f", "F", "l", "L", "-", " ", "_", "%", "\u{212A}",
                "Σ", "σ", "ς", "İ", "é", "É", "k",
            ]),
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The same answer as lower-casing the row and searching it.
        #[test]
        fn equals_lower_then_search(text in text(), needle in text()) {
            prop_assert_eq!(
                lower_contains(&text, &needle),
                text.to_lowercase().contains(needle.as_str())
            );
        }

        /// Over a `Utf8View` array (answers remembered by view), a plain one and a dictionary,
        /// each row's answer is the row's own, NULL for NULL.
        #[test]
        fn arrays_answer_row_by_row(
            pool in prop_oneof![
                prop::collection::vec(text(), 1..6),
                // Same-length rows, short (inline) or long, that differ in few letters: views
                // that differ only past their length share cache entries.
                (prop::sample::select(vec![3usize, 7, 14]), 2usize..6).prop_flat_map(|(n, k)| {
                    prop::collection::vec(
                        prop::collection::vec(prop::sample::select(vec!["r", "e", "R", "f"]), n)
                            .prop_map(|cs| cs.concat()),
                        k,
                    )
                }),
            ],
            rows in prop::collection::vec(prop::option::weighted(0.9, 0usize..6), 0..300),
            needle in text(),
        ) {
            // Long rows (held in buffers) and short ones (inline), repeated.
            let values: Vec<Option<String>> = rows
                .iter()
                .map(|r| r.map(|i| {
                    let t = &pool[i % pool.len()];
                    if i % 2 == 0 { t.repeat(3) } else { t.clone() }
                }))
                .collect();
            let expected: Vec<Option<bool>> = values
                .iter()
                .map(|v| v.as_ref().map(|v| v.to_lowercase().contains(needle.as_str())))
                .collect();
            let view: StringViewArray = values.iter().map(|v| v.as_deref()).collect();
            let plain: datafusion::arrow::array::StringArray =
                values.iter().map(|v| v.as_deref()).collect();
            let dictionary = datafusion::arrow::compute::cast(
                &plain,
                &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            )
            .unwrap();
            for array in [Arc::new(view) as ArrayRef, Arc::new(plain), dictionary] {
                let got = contains_array(&array, &needle).unwrap();
                prop_assert_eq!(got.iter().collect::<Vec<_>>(), expected.clone());
            }
        }

        /// Needles cut from the lower-cased text itself are always found.
        #[test]
        fn a_cut_of_the_lowered_text_is_found(text in text(), a in 0usize..30, b in 0usize..30) {
            let lowered = text.to_lowercase();
            let chars: Vec<char> = lowered.chars().collect();
            let (a, b) = (a.min(chars.len()), b.min(chars.len()));
            let needle: String = chars[a.min(b)..a.max(b)].iter().collect();
            prop_assert!(lower_contains(&text, &needle));
        }
    }
}
