//! The OData `$filter` subset the provider sends, parsed and evaluated over in-memory entities.
//!
//! Grammar: `or` / `and` / `not`, parentheses, and comparisons `Property op literal` (or
//! `literal op Property`) with `eq ne gt ge lt le`. Literals: strings (`'it''s'`), datetimes
//! (`datetime'2024-01-01T00:00:00Z'`), GUIDs (`guid'...'`), integers (`5`, `5L`), doubles
//! (`1.5`) and booleans. A comparison with a property the entity lacks, or of a different type,
//! is false, as in Azure Tables.

use crate::storage::entity::parse_datetime;
use crate::storage::{EdmValue, TableEntity};
use std::cmp::Ordering;
use time::OffsetDateTime;

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare { property: String, op: CmpOp, value: Literal },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            _ => return None,
        })
    }

    /// The operator with its operands swapped (`5 lt X` is `X gt 5`).
    fn mirrored(self) -> Self {
        match self {
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            other => other,
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
        }
    }
}

/// A literal value in a filter.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    String(String),
    DateTime(OffsetDateTime),
    Guid(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    Literal(Literal),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Token::Open);
            i += 1;
        } else if c == ')' {
            out.push(Token::Close);
            i += 1;
        } else if c == '\'' {
            let (text, next) = quoted(&chars, i)?;
            out.push(Token::Literal(Literal::String(text)));
            i = next;
        } else if c.is_ascii_digit() || c == '-' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let raw: String = chars[start..i].iter().collect();
            out.push(Token::Literal(number(&raw)?));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if i < chars.len() && chars[i] == '\'' {
                let (text, next) = quoted(&chars, i)?;
                i = next;
                let lit = match word.as_str() {
                    "datetime" => Literal::DateTime(
                        parse_datetime(&text).ok_or_else(|| format!("bad datetime '{text}'"))?,
                    ),
                    "guid" => Literal::Guid(text),
                    other => return Err(format!("unsupported typed literal {other}'...'")),
                };
                out.push(Token::Literal(lit));
            } else {
                match word.as_str() {
                    "true" => out.push(Token::Literal(Literal::Bool(true))),
                    "false" => out.push(Token::Literal(Literal::Bool(false))),
                    _ => out.push(Token::Word(word)),
                }
            }
        } else {
            return Err(format!("unexpected character {c:?} at {i}"));
        }
    }
    Ok(out)
}

/// A quoted string starting at `chars[start] == '\''`; `''` is an escaped quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err("unterminated string literal".into()),
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                text.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((text, i + 1)),
            Some(c) => {
                text.push(*c);
                i += 1;
            }
        }
    }
}

fn number(raw: &str) -> Result<Literal, String> {
    let bad = || format!("bad number {raw}");
    if let Some(int) = raw.strip_suffix('L') {
        return int.parse().map(Literal::Int).map_err(|_| bad());
    }
    if let Ok(v) = raw.parse::<i64>() {
        return Ok(Literal::Int(v));
    }
    raw.trim_end_matches(['d', 'D']).parse::<f64>().map(Literal::Double).map_err(|_| bad())
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(x)) if x == w)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if matches!(self.tokens.get(self.pos), Some(Token::Open)) {
            self.pos += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                _ => Err("missing ')'".into()),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, String> {
        let left = self.next().ok_or("expected a comparison")?;
        let op = match self.next() {
            Some(Token::Word(w)) => {
                CmpOp::parse(&w).ok_or_else(|| format!("unknown operator {w}"))?
            }
            other => return Err(format!("expected an operator, got {other:?}")),
        };
        let right = self.next().ok_or("expected an operand")?;
        match (left, right) {
            (Token::Word(property), Token::Literal(value)) => {
                Ok(Filter::Compare { property, op, value })
            }
            (Token::Literal(value), Token::Word(property)) => {
                Ok(Filter::Compare { property, op: op.mirrored(), value })
            }
            (l, r) => Err(format!("unsupported comparison {l:?} {op:?} {r:?}")),
        }
    }
}

/// Parses a filter string.
pub(super) fn parse(s: &str) -> Result<Filter, String> {
    let mut p = Parser { tokens: tokenize(s)?, pos: 0 };
    let f = p.or()?;
    if p.pos != p.tokens.len() {
        return Err(format!("unexpected {:?} after the expression", p.tokens.get(p.pos)));
    }
    Ok(f)
}

impl Filter {
    /// Whether `entity` matches.
    pub(super) fn matches(&self, entity: &TableEntity) -> bool {
        match self {
            Filter::And(a, b) => a.matches(entity) && b.matches(entity),
            Filter::Or(a, b) => a.matches(entity) || b.matches(entity),
            Filter::Not(a) => !a.matches(entity),
            Filter::Compare { property, op, value } => {
                let ord = match property.as_str() {
                    "PartitionKey" => compare_str(&entity.partition_key, value),
                    "RowKey" => compare_str(&entity.row_key, value),
                    "Timestamp" => match (entity.timestamp, value) {
                        (Some(t), Literal::DateTime(v)) => Some(t.cmp(v)),
                        _ => None,
                    },
                    name => entity.get(name).and_then(|p| compare(p, value)),
                };
                ord.is_some_and(|o| op.holds(o))
            }
        }
    }
}

fn compare_str(s: &str, value: &Literal) -> Option<Ordering> {
    match value {
        Literal::String(v) => Some(s.cmp(v.as_str())),
        _ => None,
    }
}

#[allow(clippy::cast_precision_loss)] // numeric comparison across Edm types, as the service does
fn compare(p: &EdmValue, value: &Literal) -> Option<Ordering> {
    match (p, value) {
        (EdmValue::String(s), _) => compare_str(s, value),
        (EdmValue::Guid(s), Literal::Guid(v)) => {
            Some(s.to_ascii_lowercase().cmp(&v.to_ascii_lowercase()))
        }
        (EdmValue::Int32(_) | EdmValue::Int64(_), Literal::Int(v)) => p.as_i64().map(|x| x.cmp(v)),
        (EdmValue::Int32(_) | EdmValue::Int64(_), Literal::Double(v)) => {
            p.as_i64().and_then(|x| (x as f64).partial_cmp(v))
        }
        (EdmValue::Double(x), Literal::Double(v)) => x.partial_cmp(v),
        (EdmValue::Double(x), Literal::Int(v)) => x.partial_cmp(&(*v as f64)),
        (EdmValue::Bool(x), Literal::Bool(v)) => Some(x.cmp(v)),
        (EdmValue::DateTime(x), Literal::DateTime(v)) => Some(x.cmp(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn entity() -> TableEntity {
        TableEntity::new("ab'c", "r1")
            .with("RuntimeStatus", EdmValue::String("Running".into()))
            .with("CreatedTime", EdmValue::DateTime(datetime!(2024-01-02 00:00 UTC)))
            .with("N", EdmValue::Int32(5))
            .with("L", EdmValue::Int64(1 << 40))
            .with("D", EdmValue::Double(1.5))
            .with("B", EdmValue::Bool(true))
    }

    fn check(filter: &str, expected: bool) {
        let f = parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(f.matches(&entity()), expected, "{filter}");
    }

    #[test]
    fn the_provider_shapes_evaluate() {
        check("PartitionKey eq 'ab''c'", true);
        check("PartitionKey eq 'ab''c' and RowKey eq 'r1'", true);
        check("PartitionKey eq 'ab''c' and RowKey eq 'r2'", false);
        check(
            "(CreatedTime ge datetime'2024-01-01T00:00:00Z') and ((RuntimeStatus eq 'Running' or RuntimeStatus eq 'Pending')) and (PartitionKey ge 'ab''c' and PartitionKey lt 'ab''d')",
            true,
        );
        check("CreatedTime le datetime'2024-01-01T00:00:00Z'", false);
        check("(RuntimeStatus eq 'Completed' or RuntimeStatus eq 'Failed')", false);
    }

    #[test]
    fn numbers_booleans_not_and_missing_properties() {
        check("N gt 4", true);
        check("N ge 5 and N le 5 and N ne 6", true);
        check("L eq 1099511627776L", true);
        check("D lt 2.0", true);
        check("B eq true", true);
        check("not (B eq true)", false);
        check("4 lt N", true);
        check("Missing eq 'x'", false);
        check("Missing ne 'x'", false);
        check("N eq 'five'", false);
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in ["PartitionKey eq", "PartitionKey xx 'a'", "(N eq 5", "N eq 'open", "N eq 5 N"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
