//! The `when` condition language: small on purpose.
//!
//! ```text
//! expr     := and ( "||" and )*
//! and      := unary ( "&&" unary )*
//! unary    := "!" unary | primary
//! primary  := "(" expr ")" | operand [ cmp operand ]
//! cmp      := "==" | "!=" | "<" | "<=" | ">" | ">="
//! operand  := path | string | number | "true" | "false" | "null"
//! path     := ("input" | "steps") ( "." segment )*
//! string   := '"' … '"' | "'" … "'"      (no escapes)
//! ```
//!
//! A path reads the run so far: `input.…` is the workflow input;
//! `steps.ID.ok` (true when the step succeeded), `steps.ID.failed`,
//! `steps.ID.skipped`, `steps.ID.status` (`"ok"`, `"failed"`, …),
//! `steps.ID.output.…` and `steps.ID.error`. A path that does not exist reads
//! as `null`. An operand alone is true unless it is `false` or `null`.
//! `==`/`!=` compare JSON values (numbers by value: `1 == 1.0`); `<`, `<=`,
//! `>`, `>=` compare two numbers or two strings and are false otherwise.

use crate::template::Path;
use serde_json::Value;
use std::fmt;

/// A parsed `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `a || b`
    Or(Box<Condition>, Box<Condition>),
    /// `a && b`
    And(Box<Condition>, Box<Condition>),
    /// `!a`
    Not(Box<Condition>),
    /// `a == b` and the other comparisons.
    Compare(Operand, CmpOp, Operand),
    /// An operand alone: true unless `false`, `null` or missing.
    Truthy(Operand),
}

/// A value in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A path into the run so far.
    Path(Path),
    /// A literal string, number, boolean or null.
    Literal(Value),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A condition that does not parse: `offset` is the byte offset in the
/// condition text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// Byte offset in the condition text.
    pub offset: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.offset + 1)
    }
}

impl std::error::Error for ConditionError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Path(String),
    Lit(Value),
    Op(&'static str),
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, ConditionError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |offset, message: String| ConditionError { offset, message };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let two = s.get(i..i + 2).unwrap_or("");
        let op2 = ["==", "!=", "<=", ">=", "&&", "||"]
            .into_iter()
            .find(|o| *o == two);
        if let Some(op) = op2 {
            out.push((start, Tok::Op(op)));
            i += 2;
            continue;
        }
        match c {
            b'!' | b'<' | b'>' | b'(' | b')' => {
                let op = match c {
                    b'!' => "!",
                    b'<' => "<",
                    b'>' => ">",
                    b'(' => "(",
                    _ => ")",
                };
                out.push((start, Tok::Op(op)));
                i += 1;
            }
            b'=' => return Err(err(start, "`=` is not an operator; use `==`".into())),
            b'&' | b'|' => {
                return Err(err(start, format!("use `{0}{0}`", c as char)));
            }
            b'"' | b'\'' => {
                let Some(len) = s[i + 1..].find(c as char) else {
                    return Err(err(start, "unclosed string".into()));
                };
                out.push((start, Tok::Lit(Value::String(s[i + 1..i + 1 + len].into()))));
                i += len + 2;
            }
            b'-' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                let text = &s[i..j];
                let n: Value = serde_json::from_str(text)
                    .map_err(|_| err(start, format!("bad number {text:?}")))?;
                if !n.is_number() {
                    return Err(err(start, format!("bad number {text:?}")));
                }
                out.push((start, Tok::Lit(n)));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'_' | b'-' | b'.'))
                {
                    j += 1;
                }
                let word = &s[i..j];
                let tok = match word {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "null" => Tok::Lit(Value::Null),
                    _ => Tok::Path(word.to_string()),
                };
                out.push((start, tok));
                i = j;
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(err(start, format!("unexpected character {ch:?}")));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn offset(&self) -> usize {
        self.toks.get(self.pos).map(|(o, _)| *o).unwrap_or(self.end)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ConditionError> {
        Err(ConditionError {
            offset: self.offset(),
            message: message.into(),
        })
    }

    fn expr(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Condition, ConditionError> {
        if self.eat("!") {
            return Ok(Condition::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.expr()?;
            if !self.eat(")") {
                return self.err("expected `)`");
            }
            return Ok(inner);
        }
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            _ => return Ok(Condition::Truthy(left)),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Condition::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ConditionError> {
        let offset = self.offset();
        match self.toks.get(self.pos).map(|(_, t)| t.clone()) {
            Some(Tok::Lit(v)) => {
                self.pos += 1;
                Ok(Operand::Literal(v))
            }
            Some(Tok::Path(p)) => {
                self.pos += 1;
                let path = Path::parse(&p).map_err(|message| ConditionError { offset, message })?;
                Ok(Operand::Path(path))
            }
            Some(Tok::Op(o)) => self.err(format!("expected a path or a value, found `{o}`")),
            None => self.err("expected a path or a value, found the end"),
        }
    }
}

impl Condition {
    /// Parses a condition (see the [module docs](self) for the grammar).
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let toks = lex(text)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: text.len(),
        };
        let c = p.expr()?;
        if p.pos < p.toks.len() {
            return p.err("unexpected token after the condition");
        }
        Ok(c)
    }

    /// Every path the condition reads.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a Path>) {
        let mut operand = |o: &'a Operand| {
            if let Operand::Path(p) = o {
                out.push(p);
            }
        };
        match self {
            Condition::Or(a, b) | Condition::And(a, b) => {
                a.walk(out);
                b.walk(out);
            }
            Condition::Not(a) => a.walk(out),
            Condition::Compare(a, _, b) => {
                operand(a);
                operand(b);
            }
            Condition::Truthy(a) => operand(a),
        }
    }

    /// Evaluates against a context (`{"input": …, "steps": {…}}`).
    pub fn eval(&self, ctx: &Value) -> bool {
        match self {
            Condition::Or(a, b) => a.eval(ctx) || b.eval(ctx),
            Condition::And(a, b) => a.eval(ctx) && b.eval(ctx),
            Condition::Not(a) => !a.eval(ctx),
            Condition::Truthy(o) => !matches!(o.value(ctx), Value::Null | Value::Bool(false)),
            Condition::Compare(a, op, b) => compare(&a.value(ctx), *op, &b.value(ctx)),
        }
    }
}

impl Operand {
    fn value(&self, ctx: &Value) -> Value {
        match self {
            Operand::Literal(v) => v.clone(),
            Operand::Path(p) => p.get(ctx).cloned().unwrap_or(Value::Null),
        }
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        CmpOp::Eq => ord.map(|o| o == Ordering::Equal).unwrap_or(a == b),
        CmpOp::Ne => !ord.map(|o| o == Ordering::Equal).unwrap_or(a == b),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Path(p) => write!(f, "{p}"),
            Operand::Literal(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Condition {
    /// Fully parenthesised, so it parses back to the same condition.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Or(a, b) => write!(f, "({a} || {b})"),
            Condition::And(a, b) => write!(f, "({a} && {b})"),
            Condition::Not(a) => write!(f, "!{a}"),
            Condition::Compare(a, op, b) => write!(f, "{a} {} {b}", op.as_str()),
            Condition::Truthy(a) => write!(f, "{a}"),
        }
    }
}

impl serde::Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "input": {"region": "eu", "qty": 3, "flag": false},
            "steps": {
                "a": {"ok": true, "failed": false, "skipped": false, "status": "ok",
                      "output": {"status": "approved", "score": 0.75}},
                "b": {"ok": false, "failed": true, "skipped": false, "status": "failed",
                      "error": "boom"}
            }
        })
    }

    fn eval(s: &str) -> bool {
        Condition::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .eval(&ctx())
    }

    #[test]
    fn evaluates() {
        assert!(eval("steps.a.ok"));
        assert!(!eval("steps.b.ok"));
        assert!(eval("steps.a.output.status == \"approved\""));
        assert!(eval("steps.a.output.status == 'approved'"));
        assert!(eval("steps.a.output.status != 'denied'"));
        assert!(eval("!steps.b.ok && steps.b.failed"));
        assert!(eval("steps.b.ok || input.region == 'eu'"));
        assert!(eval("input.qty >= 3 && input.qty < 4 && input.qty == 3.0"));
        assert!(eval("steps.a.output.score > 0.5"));
        assert!(eval("!(steps.a.ok && steps.b.ok)"));
        assert!(!eval("input.flag"));
        assert!(!eval("input.missing.deep"));
        assert!(eval("input.missing == null"));
        assert!(!eval("input.region > 3"));
        // precedence: && binds tighter than ||
        assert!(eval("steps.a.ok || steps.b.ok && false"));
        assert!(!eval("(steps.a.ok || steps.b.ok) && false"));
    }

    #[test]
    fn parse_errors_point_at_offset() {
        for (s, off, msg) in [
            ("steps.a.ok &&", 13, "found the end"),
            ("steps.a.ok = 1", 11, "use `==`"),
            ("steps.a.ok & x", 11, "use `&&`"),
            ("(steps.a.ok", 11, "expected `)`"),
            ("steps.a.ok steps.b.ok", 11, "unexpected token"),
            ("'abc", 0, "unclosed string"),
            ("steps..a", 0, "empty segment"),
            ("a == #", 5, "unexpected character"),
            ("", 0, "found the end"),
        ] {
            let e = Condition::parse(s).unwrap_err();
            assert_eq!(e.offset, off, "{s}: {e}");
            assert!(e.message.contains(msg), "{s}: {e}");
        }
    }

    #[test]
    fn non_ascii_does_not_panic() {
        for s in ["aé", "é", "steps.a.ok == 'é'", "!é", "a ==é", "\u{1F600}&&"] {
            let _ = Condition::parse(s);
        }
        assert!(Condition::parse("input.x == 'é'")
            .unwrap()
            .eval(&json!({"input": {"x": "é"}})));
    }

    #[test]
    fn display_roundtrips() {
        for s in [
            "steps.a.ok",
            "!steps.a.ok || steps.b.output.x == 'y' && input.n >= -2.5",
            "(a || b) && !(c != null)",
        ] {
            let c = Condition::parse(s).unwrap();
            let again = Condition::parse(&c.to_string()).unwrap();
            assert_eq!(c, again, "{s} -> {c}");
        }
        let c = Condition::parse("steps.a.ok && input.x == 1").unwrap();
        let paths: Vec<String> = c.paths().iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["steps.a.ok", "input.x"]);
    }
}
