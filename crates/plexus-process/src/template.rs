//! Argument templates: `{field}` in a manifest's `args` is replaced by that
//! field of the input JSON. Each template becomes exactly one argv entry; no
//! shell ever sees it, so a value like `; rm -rf /` is just an argument.

use plexus_catalog::process::{parse_template, TemplatePart};
use plexus_handler::HandlerError;
use serde_json::Value;

/// Render every argument template against `input`.
pub fn render_args(templates: &[String], input: &Value) -> Result<Vec<String>, HandlerError> {
    templates.iter().map(|t| render(t, input)).collect()
}

/// Render one template. A missing field, or one that is not a string,
/// number or boolean, is bad input naming the field.
pub fn render(template: &str, input: &Value) -> Result<String, HandlerError> {
    // Templates were checked when the manifest loaded; a failure here is
    // still reported, never a panic.
    let parts = parse_template(template)
        .map_err(|e| HandlerError::Failed(format!("argument template {template:?}: {e}")))?;
    let mut out = String::new();
    for p in parts {
        match p {
            TemplatePart::Literal(s) => out.push_str(&s),
            TemplatePart::Field(path) => {
                let name = path.join(".");
                let mut v = input;
                for seg in &path {
                    v = match v.get(seg) {
                        Some(x) => x,
                        None => {
                            return Err(HandlerError::BadInput(format!(
                                "input field {name:?} is missing (the command's arguments use {{{name}}})"
                            )))
                        }
                    };
                }
                match v {
                    Value::String(s) => {
                        if s.contains('\0') {
                            return Err(HandlerError::BadInput(format!(
                                "input field {name:?} contains a NUL byte"
                            )));
                        }
                        out.push_str(s)
                    }
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                    other => {
                        return Err(HandlerError::BadInput(format!(
                            "input field {name:?} must be a string, number or boolean, not {}",
                            type_name(other)
                        )))
                    }
                }
            }
        }
    }
    Ok(out)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_become_single_arguments_without_a_shell() {
        let input = json!({"path": "a b; rm -rf /", "n": 3, "deep": {"x": true}});
        let args = render_args(
            &[
                "--file={path}".into(),
                "{n}".into(),
                "{deep.x}".into(),
                "{{lit}}".into(),
            ],
            &input,
        )
        .unwrap();
        assert_eq!(args, vec!["--file=a b; rm -rf /", "3", "true", "{lit}"]);
    }

    #[test]
    fn missing_and_ill_typed_fields_name_the_field() {
        let e = render("{path}", &json!({})).unwrap_err();
        assert!(
            matches!(&e, HandlerError::BadInput(m) if m.contains("\"path\"") && m.contains("missing")),
            "{e}"
        );
        let e = render("{a.b}", &json!({"a": {"b": [1]}})).unwrap_err();
        assert!(
            matches!(&e, HandlerError::BadInput(m) if m.contains("\"a.b\"") && m.contains("an array")),
            "{e}"
        );
        let e = render("{a}", &json!({"a": "x\u{0}y"})).unwrap_err();
        assert!(
            matches!(&e, HandlerError::BadInput(m) if m.contains("NUL")),
            "{e}"
        );
    }
}
