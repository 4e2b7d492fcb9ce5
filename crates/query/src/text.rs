//! Text predicates as hold conditions write them (retain-govern's hold scope), evaluated without
//! lower-casing whole columns. A logical rewrite the catalog's session adds to DataFusion's
//! optimizer turns
//!
//! - `strpos(lower(x), 'needle') > 0` (a keyword) into `retain_lower_contains(x, 'needle')`;
//! - `lower(x) IN ('a', 'b')` and `lower(x) = 'a'` (custodians) into `retain_lower_in(x, 'a',
//!   'b')`;
//! - `e IS NOT FALSE` (how coverage counts an unknown as covered), where `e` is made only of
//!   those two with `AND`, `OR` and `NOT`, into `retain_is_not_false(e)`.
//!
//! Each gives the same answer as what it replaces, for every row. DataFusion evaluates the
//! originals by lower-casing every row into a new array (for a dictionary, every value of the
//! batch's dictionary, then a per-row `take` of the comparison's bits) and `IS NOT FALSE` as a
//! row-by-row comparison. Here:
//!
//! - [`LowerContains`] lower-cases one row at a time into a reused buffer (ASCII rows byte by
//!   byte; a row with other characters with `str::to_lowercase`, exactly as DataFusion's
//!   `lower()` does, Unicode rules and final sigma included) and searches it with a `memmem`
//!   finder built once per batch. Over `Utf8View` text it remembers the answer for recent
//!   views, so text decoded from a Parquet dictionary page is searched about once per distinct
//!   value. An empty needle is found in every row, as `strpos` finds it at 1.
//! - [`LowerIn`] answers once per dictionary value and maps the keys to bits through that
//!   table.
//! - [`IsNotFalse`] is two bitmap operations on 64 rows at a time.
//!
//! `NULL` stays `NULL` (and is `true` under `IS NOT FALSE`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericStringArray, OffsetSizeTrait, StringViewArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::expr::{InList, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use memchr::memmem;

use crate::group::same_array;

/// The functions the rewrite calls (not registered: only the rewrite writes them).
pub(crate) const LOWER_CONTAINS: &str = "retain_lower_contains";
pub(crate) const LOWER_IN: &str = "retain_lower_in";
pub(crate) const IS_NOT_FALSE: &str = "retain_is_not_false";

/// Rewrites the text predicates of hold conditions (see the module documentation) in every
/// plan node.
#[derive(Debug)]
pub(crate) struct RewriteTextPredicates {
    lower_contains: Arc<ScalarUDF>,
    lower_in: Arc<ScalarUDF>,
    is_not_false: Arc<ScalarUDF>,
}

impl Default for RewriteTextPredicates {
    fn default() -> Self {
        Self {
            lower_contains: Arc::new(ScalarUDF::new_from_impl(LowerContains::default())),
            lower_in: Arc::new(ScalarUDF::new_from_impl(LowerIn::default())),
            is_not_false: Arc::new(ScalarUDF::new_from_impl(IsNotFalse::default())),
        }
    }
}

impl OptimizerRule for RewriteTextPredicates {
    fn name(&self) -> &str {
        "retain_text_predicates"
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
        // A rewritten expression keeps the name it had (an unaliased `SELECT strpos(...) > 0`
        // still names its column after the `strpos`).
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|e| {
            let name = names.save(&e);
            Ok(self.rewrite_expr(e)?.update_data(|e| name.restore(e)))
        })
    }
}

impl RewriteTextPredicates {
    fn rewrite_expr(&self, expr: Expr) -> DfResult<Transformed<Expr>> {
        // Bottom-up, so an `IS NOT FALSE` sees its operand already rewritten.
        expr.transform_up(|e| {
            let call = |udf: &Arc<ScalarUDF>, args: Vec<Expr>| {
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(udf),
                    args,
                )))
            };
            let text = |s: String| Expr::Literal(ScalarValue::Utf8(Some(s)), None);
            if let Some((x, needle)) = lower_contains_parts(&e) {
                return Ok(call(&self.lower_contains, vec![x.clone(), text(needle)]));
            }
            if let Some((x, list)) = lower_in_parts(&e) {
                let mut args = vec![x.clone()];
                args.extend(list.into_iter().map(text));
                return Ok(call(&self.lower_in, args));
            }
            if let Expr::IsNotFalse(inner) = &e
                && ours_only(inner)
            {
                let Expr::IsNotFalse(inner) = e else {
                    unreachable!()
                };
                return Ok(call(&self.is_not_false, vec![*inner]));
            }
            Ok(Transformed::no(e))
        })
    }
}

/// Whether `expr` is built only of [`LowerContains`] and [`LowerIn`] calls with `AND`, `OR` and
/// `NOT`: nothing in it a scan could prune files or row groups by, so evaluating `IS NOT FALSE`
/// over it as a function loses nothing.
fn ours_only(expr: &Expr) -> bool {
    match expr {
        Expr::ScalarFunction(f) => matches!(f.name(), LOWER_CONTAINS | LOWER_IN),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And | Operator::Or,
            right,
        }) => ours_only(left) && ours_only(right),
        Expr::Not(e) => ours_only(e),
        _ => false,
    }
}

/// A non-NULL text literal's value.
fn text_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(v, _) => match v {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s),
            ScalarValue::Dictionary(_, v) => match v.as_ref() {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Some(s),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// `x` when `expr` is `lower(x)`, possibly cast to another text type.
fn lowered(expr: &Expr) -> Option<&Expr> {
    let expr = match expr {
        Expr::Cast(c)
            if matches!(
                c.field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            c.expr.as_ref()
        }
        other => other,
    };
    match expr {
        Expr::ScalarFunction(f) if f.name() == "lower" => match f.args.as_slice() {
            [x] => Some(x),
            _ => None,
        },
        _ => None,
    }
}

/// `x` and the list when `expr` is `lower(x) IN ('a', ...)` or `lower(x) = 'a'` (either side),
/// every listed value a non-NULL text literal.
fn lower_in_parts(expr: &Expr) -> Option<(&Expr, Vec<String>)> {
    match expr {
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) => {
            let x = lowered(expr)?;
            let list = list
                .iter()
                .map(|e| text_literal(e).map(str::to_owned))
                .collect::<Option<Vec<_>>>()?;
            Some((x, list))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let (x, value) = match (lowered(left), lowered(right)) {
                (Some(x), None) => (x, text_literal(right)?),
                (None, Some(x)) => (x, text_literal(left)?),
                _ => return None,
            };
            Some((x, vec![value.to_owned()]))
        }
        _ => None,
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
    if strpos.name() != "strpos" {
        return None;
    }
    let [haystack, needle] = strpos.args.as_slice() else {
        return None;
    };
    let text = lowered(haystack)?;
    Some((text, text_literal(needle)?.to_owned()))
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
            ColumnarValue::Scalar(s) => scalar_text(s).flatten(),
            ColumnarValue::Array(_) => None,
        };
        let Some(needle) = needle else {
            return exec_err!("{LOWER_CONTAINS} takes a non-NULL text literal as its needle");
        };
        match text {
            ColumnarValue::Array(a) => {
                Ok(ColumnarValue::Array(Arc::new(contains_array(a, needle)?)))
            }
            ColumnarValue::Scalar(s) => {
                let Some(v) = scalar_text(s) else {
                    return exec_err!("{LOWER_CONTAINS} takes text, not {s:?}");
                };
                let found = v.map(|v| Search::new(needle).found_in(v));
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(found)))
            }
        }
    }
}

/// `retain_lower_in(x, 'a', ...)`: whether `lower(x)` is one of the listed values; `NULL` for
/// a `NULL` `x`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct LowerIn {
    signature: Signature,
}

impl Default for LowerIn {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for LowerIn {
    fn name(&self) -> &str {
        LOWER_IN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some((x, list)) = args.args.split_first() else {
            return exec_err!("{LOWER_IN} takes a value and a list");
        };
        let list = list
            .iter()
            .map(|v| match v {
                ColumnarValue::Scalar(s) => scalar_text(s).flatten(),
                ColumnarValue::Array(_) => None,
            })
            .collect::<Option<foldhash::HashSet<&str>>>();
        let Some(list) = list else {
            return exec_err!("{LOWER_IN} takes non-NULL text literals as its list");
        };
        match x {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(Arc::new(in_array(a, &list)?))),
            ColumnarValue::Scalar(s) => {
                let Some(v) = scalar_text(s) else {
                    return exec_err!("{LOWER_IN} takes text, not {s:?}");
                };
                let found = v.map(|v| list.contains(v.to_lowercase().as_str()));
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(found)))
            }
        }
    }
}

/// A text scalar's value (`Some(None)` for NULL text); `None` when it is not text.
fn scalar_text(s: &ScalarValue) -> Option<Option<&str>> {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            Some(v.as_deref())
        }
        ScalarValue::Dictionary(_, v) => scalar_text(v),
        ScalarValue::Null => Some(None),
        _ => None,
    }
}

/// Whether each row of a text array, lower-cased, is in `list`. A dictionary with `Int32`
/// keys (how the catalog reads low-cardinality text) is answered once per value, then the keys
/// are mapped to bits through that table.
fn in_array(array: &ArrayRef, list: &foldhash::HashSet<&str>) -> DfResult<BooleanArray> {
    let row = |v: Option<&str>| v.map(|v| list.contains(v.to_lowercase().as_str()));
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(row).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(row).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(row).collect(),
        DataType::Dictionary(key, _) if key.as_ref() == &DataType::Int32 => {
            let d = array.as_dictionary::<Int32Type>();
            let answers = by_value(d.values(), list)?;
            let keys = d.keys();
            let k = keys.values();
            let found = key_bits(k, &answers.found);
            let nulls = (keys.null_count() > 0 || answers.valid.is_some()).then(|| {
                let valid = match &answers.valid {
                    Some(valid) => key_bits(k, valid),
                    None => BooleanBuffer::new_set(k.len()),
                };
                NullBuffer::new(match keys.nulls() {
                    Some(n) => &valid & n.inner(),
                    None => valid,
                })
            });
            BooleanArray::new(found, nulls)
        }
        DataType::Dictionary(_, _) => {
            let d = array.as_any_dictionary();
            let per_value = in_array(d.values(), list)?;
            take(&per_value, d.keys(), None)?.as_boolean().clone()
        }
        other => return exec_err!("{LOWER_IN} takes text, not {other}"),
    })
}

/// [`in_array`]'s answers for a dictionary's values, as bits for [`key_bits`]: each with one
/// extra entry, last, for a key out of range (a NULL key's slot may hold any number).
struct ValueAnswers {
    /// The dictionary values answered (kept alive, so comparing buffers' addresses is sound).
    values: ArrayRef,
    list: Vec<String>,
    /// Per value: 1 when in the list.
    found: Vec<u8>,
    /// Per value: 1 when not NULL; `None` when no value is NULL.
    valid: Option<Vec<u8>>,
}

/// Dictionaries each thread answered last.
const RECENT_DICTIONARIES: usize = 4;

thread_local! {
    static RECENT: RefCell<VecDeque<Rc<ValueAnswers>>> = const { RefCell::new(VecDeque::new()) };
}

/// The answers for `values` (a dictionary's values) and `list`. The batches of one Parquet
/// column chunk share their dictionary, so a thread keeps its last few answers and a chunk's
/// dictionary is lower-cased and looked up once, not once per batch.
fn by_value(values: &ArrayRef, list: &foldhash::HashSet<&str>) -> DfResult<Rc<ValueAnswers>> {
    let same_list =
        |l: &[String]| l.len() == list.len() && l.iter().all(|s| list.contains(s.as_str()));
    let hit = RECENT.with_borrow(|recent| {
        recent
            .iter()
            .find(|a| same_array(&a.values, values) && same_list(&a.list))
            .cloned()
    });
    if let Some(hit) = hit {
        return Ok(hit);
    }
    let per_value = in_array(values, list)?;
    let answers = Rc::new(ValueAnswers {
        values: Arc::clone(values),
        list: list.iter().map(|s| (*s).to_owned()).collect(),
        found: per_value
            .iter()
            .map(|v| u8::from(v == Some(true)))
            .chain([0])
            .collect(),
        valid: (per_value.null_count() > 0).then(|| {
            (0..per_value.len())
                .map(|i| u8::from(per_value.is_valid(i)))
                .chain([0])
                .collect()
        }),
    });
    RECENT.with_borrow_mut(|recent| {
        if recent.len() == RECENT_DICTIONARIES {
            recent.pop_back();
        }
        recent.push_front(Rc::clone(&answers));
    });
    Ok(answers)
}

/// For each key, the bit `by_value` (0 or 1, one entry per dictionary value and a last one for
/// keys out of range) gives its value: eight keys' table bytes at a time, packed into one byte
/// of the bitmap by one multiplication.
fn key_bits(keys: &[i32], by_value: &[u8]) -> BooleanBuffer {
    let last = by_value.len() - 1;
    let bit = |k: i32| by_value[(k as u32 as usize).min(last)];
    // Bytes b0..b7 (each 0 or 1, b0 lowest) times this have b_i at bit 56 + i.
    const PACK: u64 = 0x0102_0408_1020_4080;
    let mut bytes = Vec::with_capacity(keys.len().div_ceil(64) * 8);
    let chunks = keys.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        let spread = u64::from_le_bytes(std::array::from_fn(|j| bit(chunk[j])));
        bytes.push((spread.wrapping_mul(PACK) >> 56) as u8);
    }
    if !rest.is_empty() {
        bytes.push(
            rest.iter()
                .enumerate()
                .fold(0u8, |b, (j, &k)| b | (bit(k) << j)),
        );
    }
    BooleanBuffer::new(Buffer::from_vec(bytes), 0, keys.len())
}

/// `retain_is_not_false(b)`: `b IS NOT FALSE` (true for true and for NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct IsNotFalse {
    signature: Signature,
}

impl Default for IsNotFalse {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Boolean], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for IsNotFalse {
    fn name(&self) -> &str {
        IS_NOT_FALSE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match args.args.as_slice() {
            [ColumnarValue::Array(a)] => {
                let b = a.as_boolean();
                // A NULL row's value bit is unspecified; OR-ing in the inverted validity makes
                // it true.
                let values = match b.nulls() {
                    Some(nulls) => b.values() | &!nulls.inner(),
                    None => b.values().clone(),
                };
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                    values, None,
                ))))
            }
            [ColumnarValue::Scalar(ScalarValue::Boolean(b))] => Ok(ColumnarValue::Scalar(
                ScalarValue::Boolean(Some(b.unwrap_or(true))),
            )),
            _ => exec_err!("{IS_NOT_FALSE} takes one boolean"),
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

    #[test]
    fn dictionary_rows_take_their_value_answer_and_nulls() {
        use datafusion::arrow::array::{DictionaryArray, Int32Array, StringArray};
        let values = StringArray::from(vec![Some("AB"), None, Some("x"), Some("σς")]);
        let pattern = [Some(0), Some(1), Some(2), None, Some(0), Some(3)];
        let keys: Int32Array = pattern.iter().cycle().take(6 * 23).copied().collect();
        let array: ArrayRef = Arc::new(DictionaryArray::new(keys, Arc::new(values)));
        let list: foldhash::HashSet<&str> = ["ab", "σς"].into_iter().collect();
        let got: Vec<Option<bool>> = in_array(&array, &list).unwrap().iter().collect();
        let answer = [Some(true), None, Some(false), None, Some(true), Some(true)];
        let expected: Vec<Option<bool>> = answer.iter().cycle().take(6 * 23).copied().collect();
        assert_eq!(got, expected);
        // The same dictionary again (answers remembered), with another list, then the first.
        let other: foldhash::HashSet<&str> = ["x"].into_iter().collect();
        let got: Vec<Option<bool>> = in_array(&array, &other).unwrap().iter().collect();
        let answer = [
            Some(false),
            None,
            Some(true),
            None,
            Some(false),
            Some(false),
        ];
        let expected_other: Vec<Option<bool>> =
            answer.iter().cycle().take(6 * 23).copied().collect();
        assert_eq!(got, expected_other);
        let again: Vec<Option<bool>> = in_array(&array, &list).unwrap().iter().collect();
        assert_eq!(again, expected);
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

    /// Hold-shaped SQL over dictionaries, plain text and views, NULLs and Unicode included:
    /// each query's rows are the same with the rewrite as without it, and the rewrite ran.
    mod sql {
        use datafusion::arrow::array::{DictionaryArray, RecordBatch, StringArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::arrow::util::pretty::pretty_format_batches;
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionContext;

        use super::super::*;
        use super::*;

        const QUERIES: [(&str, &str); 6] = [
            // Unaliased: the column keeps its name.
            (
                "SELECT id, strpos(lower(s), 'a') > 0, lower(d) = 'ab' FROM t ORDER BY id",
                LOWER_CONTAINS,
            ),
            (
                "SELECT id FROM t WHERE (lower(d) IN ('ab', 'σς', 'k') OR lower(s) = 'ab') \
                 IS NOT FALSE ORDER BY id",
                IS_NOT_FALSE,
            ),
            (
                "SELECT id FROM t WHERE NOT (((lower(d) IN ('ab') OR lower(v) IN ('ab', 'é')) \
                 AND strpos(lower(v), 'b') > 0) IS NOT FALSE) ORDER BY id",
                IS_NOT_FALSE,
            ),
            (
                "SELECT id, strpos(lower(s), 'a') > 0 AS k, lower(v) = 'ab' AS e, \
                 lower(d) IN ('σς', 'ab') AS i FROM t ORDER BY id",
                LOWER_IN,
            ),
            (
                "SELECT id FROM t WHERE (strpos(lower(d), 'k') > 0 AND id > 3) IS NOT FALSE \
                 ORDER BY id",
                LOWER_CONTAINS,
            ),
            (
                "SELECT d, count(*) AS n FROM t WHERE (lower(d) = 'ab') IS NOT FALSE \
                 OR strpos(lower(s), 'é') > 0 GROUP BY d ORDER BY d",
                IS_NOT_FALSE,
            ),
        ];

        fn table(rows: &[(Option<String>, Option<String>, Option<String>)]) -> MemTable {
            let schema = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new(
                    "d",
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    true,
                ),
                Field::new("s", DataType::Utf8, true),
                Field::new("v", DataType::Utf8View, true),
            ]));
            let id: datafusion::arrow::array::Int64Array = (0..rows.len() as i64).collect();
            let d: DictionaryArray<Int32Type> = rows.iter().map(|r| r.0.as_deref()).collect();
            let s: StringArray = rows.iter().map(|r| r.1.as_deref()).collect();
            let v: StringViewArray = rows.iter().map(|r| r.2.as_deref()).collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(id), Arc::new(d), Arc::new(s), Arc::new(v)],
            )
            .unwrap();
            MemTable::try_new(schema, vec![vec![batch]]).unwrap()
        }

        async fn answers(ctx: &SessionContext) -> Vec<(String, String)> {
            let mut out = Vec::new();
            for (sql, _) in QUERIES {
                let df = ctx.sql(sql).await.unwrap();
                let plan = format!(
                    "{}",
                    df.clone().into_optimized_plan().unwrap().display_indent()
                );
                let rows = pretty_format_batches(&df.collect().await.unwrap())
                    .unwrap()
                    .to_string();
                out.push((rows, plan));
            }
            out
        }

        fn value() -> impl Strategy<Value = Option<String>> {
            prop::option::weighted(
                0.85,
                prop_oneof![
                    prop::sample::select(vec![
                        "ab", "AB", "Ab", "σς", "ΣΣ", "É", "é", "K", "\u{212A}"
                    ])
                    .prop_map(str::to_owned),
                    text(),
                ],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn same_rows_as_datafusion(
                rows in prop::collection::vec((value(), value(), value()), 0..40)
            ) {
                let (plain, ours) = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let plain = SessionContext::new();
                        plain.register_table("t", Arc::new(table(&rows))).unwrap();
                        let ours = SessionContext::new();
                        ours.add_optimizer_rule(Arc::new(RewriteTextPredicates::default()));
                        ours.register_table("t", Arc::new(table(&rows))).unwrap();
                        (answers(&plain).await, answers(&ours).await)
                    });
                for (((sql, function), (expected, _)), (got, plan)) in
                    QUERIES.iter().zip(&plain).zip(&ours)
                {
                    prop_assert_eq!(got, expected, "{}", sql);
                    prop_assert!(plan.contains(function), "{} not in the plan of {}:\n{}", function, sql, plan);
                }
            }
        }
    }
}
