//! Workflow files: every kind of malformed file gives an error naming the
//! line, column and field; the example workflows parse.

use plexus_workflow::{Branch, OnFalse, Stage, Workflow, WorkflowError, WorkflowKind};

fn err(text: &str) -> WorkflowError {
    match Workflow::parse(text) {
        Ok(_) => panic!("parsed but should not:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error is on `line`, about `field`, saying `msg`.
#[track_caller]
fn expect(text: &str, line: usize, field: &str, msg: &str) {
    let e = err(text);
    assert_eq!(e.line, Some(line), "line of: {e}");
    assert!(e.column.is_some(), "column of: {e}");
    assert_eq!(e.field.as_deref(), Some(field), "field of: {e}");
    assert!(e.message.contains(msg), "message of: {e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("line {line}, column ")),
        "{shown}"
    );
    assert!(shown.contains(&format!(": {field}: ")), "{shown}");
}

const HEAD: &str = "[workflow]\nname = \"t\"\nkind = \"sequential\"\n";

fn step(id: &str) -> String {
    format!("\n[[steps]]\nid = \"{id}\"\nplugin = \"p\"\ncommand = \"c\"\n")
}

#[test]
fn missing_field_names_step_and_field() {
    // line 1-3 header, step a at 5-8, step b header at 10
    let text = format!(
        "{HEAD}{}\n[[steps]]\nid = \"b\"\ncommand = \"c\"\n",
        step("a")
    );
    expect(&text, 10, "steps[1].plugin", "missing field");
    let e = err(&text);
    assert_eq!(
        e.in_file("flow.toml").to_string(),
        "flow.toml:10:1: steps[1].plugin: missing field"
    );
}

#[test]
fn missing_header_fields() {
    expect(
        "[workflow]\nname = \"t\"\n",
        1,
        "workflow.kind",
        "missing field",
    );
    let e = err(&step("a"));
    assert_eq!(e.field.as_deref(), Some("workflow"), "{e}");
    assert!(e.message.contains("missing field"), "{e}");
}

#[test]
fn wrong_types_and_values() {
    expect(
        "[workflow]\nname = \"t\"\nkind = \"serial\"\n",
        3,
        "workflow.kind",
        "unknown variant `serial`",
    );
    let text = format!("{HEAD}{}timeout_ms = \"soon\"\n", step("a"));
    expect(&text, 9, "steps[0].timeout_ms", "invalid type: string");
    let text = format!("{HEAD}{}input = [1, 2]\n", step("a"));
    expect(&text, 9, "steps[0].input", "invalid type: sequence");
    let text = format!("{HEAD}{}on_error = \"ignore\"\n", step("a"));
    expect(&text, 9, "steps[0].on_error", "unknown variant `ignore`");
}

#[test]
fn unknown_field() {
    let text = format!("{HEAD}{}retries = 3\n", step("a"));
    expect(&text, 9, "steps[0].retries", "unknown field");
}

#[test]
fn toml_syntax_error_has_line() {
    let text = format!("{HEAD}{}input = {{ a = 1\n", step("a"));
    let e = err(&text);
    assert_eq!(e.line, Some(9), "{e}");
    assert!(e.column.is_some());
}

#[test]
fn empty_workflow() {
    expect(HEAD, 1, "steps", "empty workflow");
}

#[test]
fn duplicate_step_ids() {
    let text = format!("{HEAD}{}{}", step("a"), step("a"));
    expect(
        &text,
        11,
        "steps[1].id",
        "duplicate step id \"a\" (also steps[0])",
    );
}

#[test]
fn bad_step_id() {
    let text = format!("{HEAD}{}", step("a b"));
    expect(&text, 6, "steps[0].id", "bad step id");
}

#[test]
fn unknown_step_in_condition() {
    let text = format!("{HEAD}{}{}when = \"steps.nope.ok\"\n", step("a"), step("b"));
    expect(&text, 14, "steps[1].when", "unknown step \"nope\"");
}

#[test]
fn condition_on_a_later_step() {
    let text = format!("{HEAD}{}when = \"steps.b.ok\"\n{}", step("a"), step("b"));
    expect(&text, 9, "steps[0].when", "does not run before step \"a\"");
}

#[test]
fn condition_syntax_error() {
    let text = format!("{HEAD}{}{}when = \"steps.a.ok &&\"\n", step("a"), step("b"));
    expect(&text, 14, "steps[1].when", "found the end");
    // The column points into the condition: `when = "` is 8 characters.
    assert_eq!(err(&text).column, Some(9 + 13));
    let text = format!("{HEAD}{}{}when = \"steps.a.okay\"\n", step("a"), step("b"));
    expect(&text, 14, "steps[1].when", "a step has ok, failed");
    let text = format!("{HEAD}{}{}when = \"env.HOME\"\n", step("a"), step("b"));
    expect(
        &text,
        14,
        "steps[1].when",
        "a path starts with `input`, `steps`",
    );
}

#[test]
fn unknown_step_in_template() {
    let text = format!(
        "{HEAD}{}{}input = {{ x = {{ y = \"{{{{steps.ghost.output.id}}}}\" }} }}\n",
        step("a"),
        step("b")
    );
    expect(&text, 14, "steps[1].input.x.y", "unknown step \"ghost\"");
    let text = format!("{HEAD}{}input = {{ x = \"{{{{input.a\" }}\n", step("a"));
    expect(&text, 9, "steps[0].input.x", "unclosed");
    let text = format!(
        "{HEAD}{}input = {{ x = \"{{{{output.a}}}}\" }}\n",
        step("a")
    );
    expect(&text, 9, "steps[0].input.x", "a path starts with");
}

#[test]
fn on_false_problems() {
    let text = format!("{HEAD}{}on_false = \"skip\"\n", step("a"));
    expect(&text, 9, "steps[0].on_false", "needs a `when`");
    let text = format!(
        "{HEAD}{}{}when = \"steps.a.ok\"\non_false = \"zzz\"\n",
        step("a"),
        step("b")
    );
    expect(&text, 15, "steps[1].on_false", "unknown step \"zzz\"");
    let text = format!(
        "{HEAD}{}{}when = \"steps.a.ok\"\non_false = \"a\"\n",
        step("a"),
        step("b")
    );
    expect(&text, 15, "steps[1].on_false", "can only jump forward");
}

#[test]
fn saga_step_without_compensate() {
    let text = format!(
        "[workflow]\nname = \"t\"\nkind = \"saga\"\n{}compensate = {{ command = \"undo\" }}\n{}",
        step("a"),
        step("b")
    );
    expect(&text, 11, "steps[1].compensate", "missing field");
}

#[test]
fn saga_rejects_conditions_and_groups() {
    let text = format!(
        "[workflow]\nname = \"t\"\nkind = \"saga\"\n{}compensate = {{ command = \"undo\" }}\nwhen = \"input.x\"\n",
        step("a")
    );
    expect(&text, 10, "steps[0].when", "not allowed in a saga");
    let text = format!("{HEAD}{}compensate = {{ command = \"undo\" }}\n", step("a"));
    expect(
        &text,
        9,
        "steps[0].compensate",
        "only allowed in a workflow of kind \"saga\"",
    );
    let text = format!(
        "[workflow]\nname = \"t\"\nkind = \"saga\"\n{}compensate = {{ command = \"undo\", input = {{ id = \"{{{{output.id}}}}\" }} }}\n",
        step("a")
    );
    expect(
        &text,
        9,
        "steps[0].compensate.input.id",
        "a path starts with `input`, `steps`, `result`",
    );
}

#[test]
fn parallel_group_without_timeout() {
    let text = format!("{HEAD}{}parallel = \"fan\"\n", step("a"));
    expect(
        &text,
        9,
        "steps[0].parallel",
        "has no timeout: add [groups.fan]",
    );
    let text = format!("{HEAD}\n[groups.fan]\n{}parallel = \"fan\"\n", step("a"));
    expect(&text, 5, "groups.fan.timeout_ms", "missing field");
    let text = "[workflow]\nname = \"t\"\nkind = \"parallel\"\n".to_string() + &step("a");
    expect(
        &text,
        1,
        "workflow.timeout_ms",
        "a parallel workflow needs a timeout",
    );
}

#[test]
fn group_problems() {
    let g = "\n[groups.fan]\ntimeout_ms = 100\n";
    let text = format!(
        "{HEAD}{g}{}parallel = \"fan\"\n{}{}parallel = \"fan\"\n",
        step("a"),
        step("b"),
        step("c")
    );
    expect(&text, 23, "steps[2].parallel", "must be consecutive");
    let text = format!("{HEAD}{g}{}", step("a"));
    expect(&text, 5, "groups.fan", "no step uses this group");
    let text = format!("{HEAD}{g}{}parallel = \"fan\"\n{}parallel = \"fan\"\ninput = {{ v = \"{{{{steps.a.output}}}}\" }}\n", step("a"), step("b"));
    expect(
        &text,
        19,
        "steps[1].input.v",
        "does not run before step \"b\"",
    );
}

#[test]
fn zero_values() {
    let text = format!("{HEAD}{}max_attempts = 0\n", step("a"));
    expect(&text, 9, "steps[0].max_attempts", "at least 1");
    let text = format!("{HEAD}{}timeout_ms = 0\n", step("a"));
    expect(&text, 9, "steps[0].timeout_ms", "above 0");
}

#[test]
fn load_prefixes_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flow.toml");
    std::fs::write(&p, format!("{HEAD}{}{}", step("a"), step("a"))).unwrap();
    let e = Workflow::load(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "flow.toml:11:6: steps[1].id: duplicate step id \"a\" (also steps[0])"
    );
    let e = Workflow::load(dir.path().join("missing.toml")).unwrap_err();
    assert!(
        e.to_string().starts_with("missing.toml: cannot read:"),
        "{e}"
    );
}

#[test]
fn a_full_sequential_workflow_plans() {
    let text = r#"
[workflow]
name = "full"
kind = "sequential"
description = "all features"

[retry]
backoff = "linear"
initial_delay_ms = 10

[groups.checks]
timeout_ms = 2500

[[steps]]
id = "triage"
plugin = "jira-orchestrator"
command = "triage"
input = { issue = "{{input.issue}}", tags = ["a", "{{input.tag}}"] }
max_attempts = 3
timeout_ms = 1000

[steps.transform]
ticket = "{{output.ticket}}"

[[steps]]
id = "a11y"
plugin = "frontend-powerhouse"
command = "audit-a11y"
parallel = "checks"
when = "steps.triage.ok && steps.triage.output.kind == 'ui'"

[[steps]]
id = "perf"
plugin = "frontend-powerhouse"
command = "analyze-performance"
parallel = "checks"
on_error = "continue"

[[steps]]
id = "gate"
plugin = "jira-orchestrator"
command = "qa-review"
when = "steps.a11y.ok || steps.perf.ok"
on_false = "report"

[[steps]]
id = "release"
plugin = "jira-orchestrator"
command = "release"

[[steps]]
id = "report"
plugin = "jira-orchestrator"
command = "notify"
"#;
    let wf = Workflow::parse(text).unwrap();
    assert_eq!(wf.kind(), WorkflowKind::Sequential);
    assert_eq!(wf.steps().len(), 6);
    assert_eq!(wf.steps()[0].max_attempts, 3);
    assert_eq!(wf.steps()[3].on_false, OnFalse::Jump("report".into()));
    let stages = &wf.plan().stages;
    assert_eq!(stages.len(), 5);
    assert!(
        matches!(&stages[1], Stage::Parallel { group, timeout_ms: 2500, steps } if group == "checks" && steps.len() == 2)
    );
    match &stages[2] {
        Stage::Step(s) => assert_eq!(
            s.on_false,
            Branch::Jump {
                to_step: "report".into(),
                to_stage: 4
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(wf.plan().stage_of(5), Some(4));
    // Serializable for listings.
    let json = serde_json::to_value(&wf).unwrap();
    assert_eq!(
        json["steps"][1]["when"],
        "(steps.triage.ok && steps.triage.output.kind == \"ui\")"
    );
}

#[test]
fn parallel_kind_is_one_group() {
    let text = "[workflow]\nname = \"t\"\nkind = \"parallel\"\ntimeout_ms = 300\n".to_string()
        + &step("a")
        + &step("b");
    let wf = Workflow::parse(&text).unwrap();
    assert_eq!(wf.plan().stages.len(), 1);
    assert!(
        matches!(&wf.plan().stages[0], Stage::Parallel { timeout_ms: 300, steps, .. } if steps.len() == 2)
    );
}

#[test]
fn example_workflows_parse() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-config/workflows");
    let mut kinds = Vec::new();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let wf = Workflow::load(&path).unwrap_or_else(|e| panic!("{e}"));
        kinds.push(wf.kind());
        n += 1;
    }
    assert!(n >= 3, "expected at least 3 example workflows, found {n}");
    for k in [
        WorkflowKind::Sequential,
        WorkflowKind::Parallel,
        WorkflowKind::Saga,
    ] {
        assert!(kinds.contains(&k), "no {k:?} example");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../../cluster-config/workflows/ticket-to-pr.toml");

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = Workflow::parse(&text);
        }

        /// Damaged real files give an error with a line, or parse.
        #[test]
        fn damaged_example_errors_have_a_place(cut in 0usize..EXAMPLE.len(), insert in "[ =\"{}\\[\\]a-z0-9é\n]{0,8}") {
            let mut cut = cut;
            while !EXAMPLE.is_char_boundary(cut) {
                cut -= 1;
            }
            let text = format!("{}{}{}", &EXAMPLE[..cut], insert, &EXAMPLE[cut..]);
            if let Err(e) = Workflow::parse(&text) {
                prop_assert!(e.line.is_some(), "no line: {}", e);
                prop_assert!(e.line.unwrap() <= text.lines().count() + 1, "{}", e);
            }
        }
    }
}
