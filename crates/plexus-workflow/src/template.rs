//! Templates in step inputs: `"{{input.order_id}}"`,
//! `"{{steps.reserve.output.reservation_id}}"`, `"order-{{input.id}}"`.
//!
//! A string that is exactly one template (`"{{path}}"`, spaces allowed
//! inside the braces) becomes the value at `path`, keeping its JSON type. A
//! string mixing text and templates becomes a string: string values are
//! inserted as they are, other values as JSON text. Object keys are never
//! templated. A path is dot-separated names; a number indexes an array
//! (`input.items.0.sku`). A path that does not exist is an error naming it:
//! templates never silently render as empty.

use serde_json::Value;
use std::fmt;

/// A dotted path into the render context, e.g. `steps.reserve.output.id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path(Vec<String>);

impl Path {
    /// Parses `a.b.0.c`. Segments are non-empty and made of ASCII letters,
    /// digits, `_` and `-`.
    pub fn parse(text: &str) -> Result<Path, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty path".into());
        }
        let mut segs = Vec::new();
        for seg in text.split('.') {
            if seg.is_empty() {
                return Err(format!("empty segment in path {text:?}"));
            }
            if !seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "bad segment {seg:?} in path {text:?} (use letters, digits, _ and -)"
                ));
            }
            segs.push(seg.to_string());
        }
        Ok(Path(segs))
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The first segment (`input`, `steps`, `result`, `output`).
    pub fn root(&self) -> &str {
        &self.0[0]
    }

    /// The step a `steps.ID…` path names.
    pub fn step(&self) -> Option<&str> {
        match self.0.as_slice() {
            [root, id, ..] if root == "steps" => Some(id),
            _ => None,
        }
    }

    /// The value at this path, or why there is none.
    pub fn resolve<'a>(&self, ctx: &'a Value) -> Result<&'a Value, String> {
        let mut cur = ctx;
        for (i, seg) in self.0.iter().enumerate() {
            let next = match cur {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
                _ => None,
            };
            match next {
                Some(v) => cur = v,
                None => {
                    let parent = if i == 0 {
                        "the context".to_string()
                    } else {
                        self.0[..i].join(".")
                    };
                    let what = match cur {
                        Value::Object(_) => format!("{parent} has no field {seg:?}"),
                        Value::Array(a) => {
                            format!("{parent} has no element {seg} (length {})", a.len())
                        }
                        Value::Null => format!("{parent} is null"),
                        other => format!("{parent} is {}, not an object", type_name(other)),
                    };
                    return Err(what);
                }
            }
        }
        Ok(cur)
    }

    /// Like [`Path::resolve`], `None` instead of an error.
    pub fn get<'a>(&self, ctx: &'a Value) -> Option<&'a Value> {
        self.resolve(ctx).ok()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Path(Path),
}

/// One parsed template string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a string with `{{path}}` parts.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!("unclosed {{{{ in {s:?}"));
            };
            pieces.push(Piece::Path(Path::parse(&after[..close])?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// The paths this template reads.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Path(p) => Some(p),
            Piece::Text(_) => None,
        })
    }

    /// Renders against `ctx`; errors name the missing path.
    pub fn render(&self, ctx: &Value) -> Result<Value, TemplateError> {
        let lookup = |p: &Path| {
            p.resolve(ctx).map_err(|reason| TemplateError {
                field: String::new(),
                path: p.to_string(),
                reason,
            })
        };
        match self.pieces.as_slice() {
            [] => Ok(Value::String(String::new())),
            [Piece::Path(p)] => lookup(p).cloned(),
            pieces => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Path(p) => match lookup(p)? {
                            Value::String(s) => out.push_str(s),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }
}

/// A template that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Where in the rendered value the template sits, e.g. `input.order`.
    pub field: String,
    /// The template's path, e.g. `steps.reserve.output.id`.
    pub path: String,
    /// Why it has no value.
    pub reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "template {{{{{}}}}}: {}", self.path, self.reason)
    }
}

impl std::error::Error for TemplateError {}

/// Renders every template string inside `value` against `ctx`. `field` names
/// `value` in errors (e.g. `input`).
pub fn render(value: &Value, ctx: &Value, field: &str) -> Result<Value, TemplateError> {
    match value {
        Value::String(s) => {
            if !s.contains("{{") {
                return Ok(value.clone());
            }
            let t = Template::parse(s).map_err(|reason| TemplateError {
                field: field.to_string(),
                path: s.clone(),
                reason,
            })?;
            t.render(ctx).map_err(|mut e| {
                e.field = field.to_string();
                e
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| render(v, ctx, &format!("{field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(k.clone(), render(v, ctx, &format!("{field}.{k}"))?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// Every template path inside `value`, with the field it sits in; or the
/// first template that does not parse.
pub(crate) fn collect(value: &Value, field: &str) -> Result<Vec<(String, Path)>, (String, String)> {
    let mut out = Vec::new();
    collect_into(value, field, &mut out)?;
    Ok(out)
}

fn collect_into(
    value: &Value,
    field: &str,
    out: &mut Vec<(String, Path)>,
) -> Result<(), (String, String)> {
    match value {
        Value::String(s) if s.contains("{{") => {
            let t = Template::parse(s).map_err(|e| (field.to_string(), e))?;
            out.extend(t.paths().map(|p| (field.to_string(), p.clone())));
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_into(v, &format!("{field}[{i}]"), out)?;
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                collect_into(v, &format!("{field}.{k}"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "input": {"order_id": "o-7", "qty": 3, "items": [{"sku": "a"}, {"sku": "b"}]},
            "steps": {"reserve": {"ok": true, "output": {"reservation_id": "r-1", "n": 2}}}
        })
    }

    #[test]
    fn whole_template_keeps_type() {
        let v = json!({"q": "{{input.qty}}", "r": "{{ steps.reserve.output.reservation_id }}",
                       "all": "{{steps.reserve.output}}", "sku": "{{input.items.1.sku}}"});
        let out = render(&v, &ctx(), "input").unwrap();
        assert_eq!(
            out,
            json!({"q": 3, "r": "r-1", "all": {"reservation_id": "r-1", "n": 2}, "sku": "b"})
        );
    }

    #[test]
    fn mixed_text_interpolates() {
        let v = json!(["order {{input.order_id}} x{{input.qty}}", "plain", 5, null]);
        let out = render(&v, &ctx(), "input").unwrap();
        assert_eq!(out, json!(["order o-7 x3", "plain", 5, null]));
    }

    #[test]
    fn missing_path_names_field_and_path() {
        let v = json!({"a": {"b": "{{steps.reserve.output.price}}"}});
        let e = render(&v, &ctx(), "input").unwrap_err();
        assert_eq!(e.field, "input.a.b");
        assert_eq!(e.path, "steps.reserve.output.price");
        assert_eq!(
            e.to_string(),
            "input.a.b: template {{steps.reserve.output.price}}: steps.reserve.output has no field \"price\""
        );
        let e = render(&json!("{{input.items.5.sku}}"), &ctx(), "input").unwrap_err();
        assert!(e.reason.contains("no element 5 (length 2)"), "{e}");
        let e = render(&json!("{{input.qty.x}}"), &ctx(), "input").unwrap_err();
        assert!(e.reason.contains("input.qty is a number"), "{e}");
    }

    #[test]
    fn malformed_templates() {
        assert!(Template::parse("{{input.a").is_err());
        assert!(Template::parse("{{}}").is_err());
        assert!(Template::parse("{{a..b}}").is_err());
        assert!(Template::parse("{{a b}}").is_err());
        let paths = collect(&json!({"x": ["{{input.a}} {{steps.s.ok}}"]}), "input").unwrap();
        assert_eq!(paths.len(), 2);
        assert_eq!(paths[1].0, "input.x[0]");
        assert_eq!(paths[1].1.step(), Some("s"));
    }
}
